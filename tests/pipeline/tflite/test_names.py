"""The one layer -> tensor name matcher, on tensor names the TFLite converter (TF 2.21) wrote
for digits_cnn: its qat_int8.tflite from `qat run digits_cnn`, and the same model converted
with annotate.keep_float = ["block3_pw_.*"] (those layers unwrapped, so their own names)."""

from pipeline.tflite.names import LayerNames, primary, tokens

# digits_cnn's Keras layers, in topological order (the QuantizeLayer first, as in a QAT model)
LAYERS = ["quantize_layer", "block1_conv", "block1_bn", "block1_relu", "block2_dwconv",
          "block2_bn", "block2_relu", "block2_pw_conv", "block2_pw_bn", "block2_pw_relu", "pool",
          "block3_dwconv", "block3_bn", "block3_relu", "block3_pw_conv", "block3_pw_bn",
          "block3_pw_relu", "gap", "dropout", "logits"]
# activation tensors of qat_int8.tflite (index: name)
FUSED_CONV = ("digits_cnn/quant_block2_pw_relu/Relu;digits_cnn/quant_block2_pw_bn/"
              "FusedBatchNormV3;digits_cnn/quant_block2_pw_conv/Conv2D1")
POOL = "digits_cnn/quant_pool/MaxPool"
OUTPUT = "StatefulPartitionedCall:0"  # signature output key: quant_logits
INPUT = "serving_default_image:0"     # signature input key: image
WEIGHTS = ("digits_cnn/quant_block1_conv/Conv2D;digits_cnn/quant_block1_conv/LastValueQuant/"
           "FakeQuantWithMinMaxVarsPerChannel")
# the keep_float conversion: a wrapped ReLU fused into an unwrapped conv
MIXED = "digits_cnn/quant_block3_pw_relu/Relu;digits_cnn/block3_pw_conv/Conv2D"


def test_tokens_and_primary():
    assert tokens(POOL) == {"digits_cnn", "quant_pool", "MaxPool"}
    assert tokens(OUTPUT) == {"StatefulPartitionedCall", "0"}
    assert primary(FUSED_CONV) == "digits_cnn/quant_block2_pw_relu/Relu"
    assert primary(POOL) == POOL


def test_a_fused_chain_lists_its_layers_in_order_and_ends_with_the_producer():
    m = LayerNames(LAYERS)
    assert m.layers_in(FUSED_CONV) == ["block2_pw_conv", "block2_pw_bn", "block2_pw_relu"]
    assert m.layers_in(POOL) == ["pool"]
    # the weights are named after the conv they belong to
    assert m.layers_in(WEIGHTS) == ["block1_conv"]


def test_graph_inputs_and_outputs_match_by_signature_key():
    m = LayerNames(LAYERS)
    assert m.layers_in(OUTPUT) == [] and not m.mentions(OUTPUT)
    assert m.layers_in(OUTPUT, extra={"quant_logits"}) == ["logits"]
    assert m.layers_in(INPUT, extra={"image"}) == []  # the InputLayer is not in the list


def test_wrapped_and_unwrapped_names_both_match():
    m = LayerNames(["block3_pw_conv", "block3_pw_bn", "block3_pw_relu"])
    assert m.layers_in(MIXED) == ["block3_pw_conv", "block3_pw_relu"]
    assert m.mentions(MIXED) and not m.mentions(FUSED_CONV) and not m.mentions(POOL)


def test_whole_components_only():
    # block2_pw_conv must not match "block2_pw_conv_1", nor "pw_conv" a part of a name
    m = LayerNames(["pw_conv", "block2_pw_conv_1", "block2"])
    assert m.layers_in(FUSED_CONV) == [] and not m.mentions(FUSED_CONV)


def test_a_layer_own_name_wins_over_another_layers_wrapper_name():
    # a layer literally named quant_x (unwrapped) next to a wrapped layer x
    m = LayerNames(["x", "quant_x"])
    assert m.layers_in("model/quant_x/Relu") == ["quant_x"]
    assert m.layers_in("model/quant_quant_x/Relu") == ["quant_x"]
    assert m.layers_in("model/x/Relu") == ["x"]


# tf_keras' MobileNetV3Small names layers with "/" (qat_int8.tflite of glyphs_mnv3, TF 2.21)
MNV3 = ["Conv", "Conv/BatchNorm", "re_lu", "expanded_conv/depthwise",
        "expanded_conv/depthwise/BatchNorm", "re_lu_1", "expanded_conv/squeeze_excite/AvgPool",
        "expanded_conv/squeeze_excite/Conv", "expanded_conv/squeeze_excite/Relu",
        "expanded_conv/squeeze_excite/Conv_1"]
SE_CONV = ("glyphs_mnv3/quant_expanded_conv/squeeze_excite/Relu/Relu;glyphs_mnv3/"
           "quant_expanded_conv/squeeze_excite/Conv/BiasAdd;glyphs_mnv3/quant_expanded_conv/"
           "squeeze_excite/Conv/Conv2D")


def test_layer_names_with_slashes_match_as_a_whole():
    m = LayerNames(MNV3)
    # the SE block's Conv, not the stem layer "Conv" its last component spells
    assert m.layers_in(SE_CONV) == ["expanded_conv/squeeze_excite/Conv",
                                    "expanded_conv/squeeze_excite/Relu"]
    assert m.layers_in("glyphs_mnv3/quant_Conv/Conv2D") == ["Conv"]
    assert m.layers_in("glyphs_mnv3/quant_Conv/BatchNorm/FusedBatchNormV32") == \
        ["Conv/BatchNorm"]
    assert m.layers_in("glyphs_mnv3/quant_re_lu_1/Relu;glyphs_mnv3/quant_expanded_conv/"
                       "depthwise/BatchNorm/FusedBatchNormV33") == \
        ["expanded_conv/depthwise/BatchNorm", "re_lu_1"]
    assert m.layers_in("glyphs_mnv3/quant_expanded_conv/squeeze_excite/Conv_1/BiasAdd/"
                       "ReadVariableOp1") == ["expanded_conv/squeeze_excite/Conv_1"]
    assert not m.mentions("glyphs_mnv3/quant_expanded_conv/squeeze_excite/Mul/mul")
    # a layer left out of the list (not quantized) is not taken for a layer named like its
    # last component
    m = LayerNames(["Conv"])
    assert m.layers_in(SE_CONV) == [] and not m.mentions(SE_CONV)
