"""``--resume`` continues the same run: the saved config must equal this one."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import ConfigError, UsageError
from pipeline.stages import config as config_mod
from pipeline.stages.config import Config

# Keys that may differ between a run and its resumption: where it is written and how
# verbose the progress is (--quiet/--json) change nothing in the artifacts.
_RESUME_FREE = ("output.", "qat.verbose")


def check_same_run(cfg: Config, source) -> None:
    """``--resume`` continues the *same* run: the config the earlier attempt saved
    (config.toml) must equal this one (the model path, data, seed and every training key);
    otherwise its checkpoints would be restored into another model or mixed with other
    settings."""
    saved = Path(source) / "config.toml"
    if not saved.is_file():
        return  # killed before its first file: nothing but checkpoints-free state to reuse
    try:
        old = config_mod.load(saved)
    except ConfigError as exc:
        raise UsageError("The run to resume has an unreadable config.toml", f"{saved} ({exc})",
                         "Run without --resume to start over")

    def flat(c):
        return {f"{sec}.{k}" if isinstance(v, dict) else sec: vv
                for sec, v in c.to_dict().items()
                for k, vv in (v.items() if isinstance(v, dict) else [(None, v)])}

    a, b = flat(old), flat(cfg)
    diffs = [k for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k) and not k.startswith(_RESUME_FREE)]
    if diffs:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diffs[:3])
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise UsageError("--resume must continue the same run, but the model or config "
                         "differs from the run being resumed", f"{shown}{more} (saved in "
                         f"{saved})", "Rerun with the same model and settings, drop --resume "
                         "to start over, or pass --name for a new run directory")
