from android_harness.cli import console_main

console_main()
