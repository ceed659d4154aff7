"""The benchmark CLI and the analytic FLOP counter."""

import json
import os
import subprocess
import sys

import keras
import pytest

from dcgan_tf import bench, flops
from dcgan_tf.config import Config

TINY = Config(dataset="random", image_size=16, channels=1, ngf=8, ndf=8, nz=16, batch_size=8, train_steps=1)


def test_flops_of_a_tiny_conv_and_transposed_conv_match_hand_counts():
    conv = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 4, strides=2, padding="same")])
    # 4x4 outputs x 2 channels, each a 4x4x3 window: 16 * 2 * 48 multiply-adds = 3072 FLOPs.
    assert flops.forward_flops(conv) == 2 * (4 * 4) * 2 * (4 * 4 * 3)
    deconv = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same")])
    # Every one of the 4x4x2 inputs meets the whole 4x4x3 kernel slice: the same 3072 FLOPs.
    assert flops.forward_flops(deconv) == 2 * (4 * 4 * 2) * (4 * 4 * 3)
    dense = keras.Sequential([keras.Input((10,)), keras.layers.Dense(7)])
    assert flops.forward_flops(dense) == 2 * 10 * 7


def test_train_step_flops_count_every_pass_of_the_update():
    g = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])  # 40 FLOPs
    d = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])  # 24 + 6 = 30
    step = flops.train_step_flops(g, d, batch_size=2)
    # D update: 2 x (fwd 30 + weight grads 30 + input grads 30 - 24); G update: D fwd + input grads (60),
    # G fwd + weight grads (80), no input grads into z.
    assert step.per_example == 2 * (30 + 30 + 6) + 60 + 80
    assert step.per_step == 2 * step.per_example


def test_train_benchmark_reports_its_settings_and_a_positive_rate():
    result = bench.bench_train(TINY, windows=2, steps_per_window=1, warmup_steps=1, matmul_gflops=100.0)
    assert result["bench"] == "train" and result["dataset"] == "random"
    assert (result["image_size"], result["ngf"], result["ndf"], result["batch_size"]) == (16, 8, 8, 8)
    assert result["img_per_s"] > 0 and len(result["window_img_per_s"]) == 2
    assert result["gflop_per_step"] > 0 and 0 < result["fraction_of_matmul"]
    assert result["machine"]["cores"] >= 1


def test_input_benchmark_measures_the_real_pipeline():
    result = bench.bench_input(TINY.replace(dataset="synthetic"), windows=2, batches_per_window=2)
    assert result["bench"] == "input" and result["dataset"] == "synthetic" and result["img_per_s"] > 0
    with pytest.raises(ValueError, match="needs a real dataset"):
        bench.bench_input(TINY)


def test_layers_benchmark_times_both_implementations_of_every_conv_layer():
    """One line per (layer, implementation): D's convs and G's transposed convs, oneDNN and matmul, the model's
    choice marked once per layer (the size rule here: matmul only where the small side is 4x4, never conv1)."""
    lines = list(bench.bench_layers(TINY.replace(ngf=4, ndf=6, mixed_precision="none", conv_kernels="size"),
                                    windows=1, repeats=1))
    layers = [(line["layer"], line["implementation"]) for line in lines]
    # 16x16 images: D 16->8 (1->6), 8->4 (6->12); G 4->8 (8->4), 8->16 (4->1).
    assert layers == [(name, impl) for name in ("conv 16x16<->8x8 1->6", "conv 8x8<->4x4 6->12",
                                                "deconv 8x8<->4x4 8->4", "deconv 16x16<->8x8 4->1")
                      for impl in ("onednn", "matmul")]
    used = {(line["layer"], line["implementation"]) for line in lines if line["used_by_model"]}
    # conv1 (8x8 -> 4x4 here) follows D's input layer and never takes the matmul form (kernels.Layers.conv).
    assert used == {("conv 16x16<->8x8 1->6", "onednn"), ("conv 8x8<->4x4 6->12", "onednn"),
                    ("deconv 8x8<->4x4 8->4", "matmul"), ("deconv 16x16<->8x8 4->1", "onednn")}
    # The work per call is the layer's arithmetic (batch 8 here); its times and rates are measurements, rounded
    # for printing, so only their sign holds on every machine (a slow or busy CPU rounds a rate down to 0.0).
    work = {"conv 16x16<->8x8 1->6": 6 * 8 * 64 * 16 * 6, "conv 8x8<->4x4 6->12": 6 * 8 * 16 * 16 * 72,
            "deconv 8x8<->4x4 8->4": 6 * 8 * 16 * 16 * 32, "deconv 16x16<->8x8 4->1": 6 * 8 * 64 * 16 * 4}
    for line in lines:
        assert line["gflop"] == pytest.approx(work[line["layer"]] / 1e9, rel=1e-5), line
        assert line["ms"] >= 0 and line["gflop_per_s"] >= 0 and line["precision"] == "none", line


@pytest.mark.slow
def test_cli_prints_one_json_line_per_measurement():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-m", "dcgan_tf.bench", "flops", "--image_size=16", "--ngf=8", "--ndf=8", "--batch_size=4",
         "--matmul=false"], capture_output=True, text=True, env=env, check=True, timeout=120).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["bench"] == "flops" and lines[0]["step_gflop_per_batch"] > 0
    assert (lines[0]["image_size"], lines[0]["ngf"], lines[0]["batch_size"]) == (16, 8, 4)


def test_comparison_ratios_use_the_fastest_peer_of_the_same_precision_in_each_round():
    rates = {"dcgan_tf_default": [30.0, 20.0], "dcgan_tf_float32": [12.0, 10.0], "torch_eager": [8.0, 5.0],
             "torch_channels_last": [10.0, 4.0], "torch_bf16": [15.0, 10.0]}
    last = {"dcgan_tf_default": {"precision": "bfloat16", "xla": False}, "dcgan_tf_float32": {"precision": "none"},
            "torch_eager": {}, "torch_channels_last": {}, "torch_bf16": {}}
    lines = {line["variant"]: line for line in bench._comparison_lines(TINY, list(rates), rates, last, [1.0, 2.0])}
    default = lines["dcgan_tf_default"]
    assert default["precision"] == "bfloat16" and default["fastest_torch_same_precision"] == "torch_bf16"
    assert default["round_ratio_to_fastest_torch"] == [2.0, 2.0] and default["ratio_to_fastest_torch"] == 2.0
    f32 = lines["dcgan_tf_float32"]  # round 1 against channels_last (10), round 2 against eager (5)
    assert f32["round_ratio_to_fastest_torch"] == [1.2, 2.0] and f32["ratio_to_fastest_torch"] == 1.6
    assert lines["torch_eager"]["img_per_s"] == 6.5 and lines["torch_eager"]["round_load_1min"] == [1.0, 2.0]


@pytest.mark.slow
def test_compare_runs_every_variant_in_its_own_process_and_prints_one_line_each(tmp_path):
    # A stand-in for the PyTorch peer (PyTorch is not a dependency): it answers like the real script.
    peer = tmp_path / "peer.py"
    peer.write_text("import json, sys\nargs = sys.argv[1:]\n"
                    "print(json.dumps({'impl': 'torch-reference', 'bf16': '--bf16' in args, 'img_per_s': 5.0,"
                    " 'args': args}))\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-m", "dcgan_tf.bench", "compare", "--image_size=32", "--ngf=4", "--ndf=4", "--batch_size=4",
         "--rounds=1", "--windows=1", "--steps_per_window=1", "--warmup_steps=1", "--matmul=false",
         "--variants=dcgan_tf_float32,torch_eager,torch_channels_last_bf16", f"--torch_python={sys.executable}",
         f"--torch_reference={peer}"], capture_output=True, text=True, env=env, check=True, timeout=300).stdout
    lines = {line["variant"]: line for line in map(json.loads, filter(None, out.splitlines()))}
    assert list(lines) == ["dcgan_tf_float32", "torch_eager", "torch_channels_last_bf16"]
    ours = lines["dcgan_tf_float32"]
    assert ours["precision"] == "float32" and ours["fastest_torch_same_precision"] == "torch_eager"
    assert ours["ratio_to_fastest_torch"] == pytest.approx(ours["img_per_s"] / 5.0, rel=0.01)
    assert lines["torch_channels_last_bf16"]["precision"] == "bfloat16"


@pytest.mark.parametrize("isa,expected", [
    ("avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
    ("AVX512_CORE_AMX", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "ATEN_CPU_CAPABILITY": "avx512"}),
    ("SSE41", {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}),
    (None, {}), ("", {}), ("ALL", {}),
])
def test_an_isa_cap_caps_onednn_and_pytorchs_aten_alike(isa, expected):
    assert bench.isa_environ(isa) == expected


def test_onednn_verbose_lines_name_the_kernels_that_ran():
    output = "\n".join([
        "onednn_verbose,v1,info,cpu,isa:Intel AVX2",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx2,forward_training,src:f32,,alg,mb8,1.2",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_data,src:f32,,alg,mb8,0.9",
        "onednn_verbose,v1,primitive,exec,cpu,gemm_api,,undef,src:f32,,,m64n64k64,0.1",
        "onednn_verbose,exec,cpu,reorder,jit:uni,undef,src:f32,,,8x8,0.01",  # the older format, without v1
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,jit:avx512_core,forward,,,,0.1",  # not run
        "{\"img_per_s\": 1.0}",
    ])
    assert bench.onednn_kernels(output) == {"convolution": ["brg_conv_fwd:avx2", "jit:avx2"],
                                            "gemm_api": ["(unnamed)"], "reorder": ["jit:uni"]}


@pytest.mark.slow
def test_compare_under_an_isa_cap_runs_every_variant_capped(tmp_path):
    # The peer stand-in reports the cap it was given and prints a oneDNN verbose line when asked for one.
    peer = tmp_path / "peer.py"
    peer.write_text("import json, os\n"
                    "if os.environ.get('ONEDNN_VERBOSE') == '1':\n"
                    "    print('onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward,,,,1.0')\n"
                    "print(json.dumps({'img_per_s': 5.0, 'isa': os.environ.get('ONEDNN_MAX_CPU_ISA'),"
                    " 'aten': os.environ.get('ATEN_CPU_CAPABILITY')}))\n")
    # No inherited cap: the test gives the one it checks.
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                                                              "ATEN_CPU_CAPABILITY", "ONEDNN_VERBOSE")}
    out = subprocess.run(
        [sys.executable, "-m", "dcgan_tf.bench", "compare", "--image_size=16", "--ngf=4", "--ndf=4", "--batch_size=4",
         "--rounds=1", "--windows=1", "--steps_per_window=1", "--warmup_steps=1", "--matmul=false", "--isa=avx2",
         "--kernels_check", "--variants=dcgan_tf_default,torch_eager", f"--torch_python={sys.executable}",
         f"--torch_reference={peer}"], capture_output=True, text=True, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=True, timeout=300).stdout
    lines = {line["variant"]: line for line in map(json.loads, filter(None, out.splitlines()))}
    ours, peer_line = lines["dcgan_tf_default"], lines["torch_eager"]
    assert ours["isa_environ"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    # auto honours the cap: float32 even on a CPU with bfloat16 arithmetic (where it used to pick bfloat16).
    assert ours["precision"] == "float32" and ours["fastest_torch_same_precision"] == "torch_eager"
    # Every oneDNN kernel the capped TensorFlow step ran is within the cap.
    ran = [name for names in ours["onednn_kernels"].values() for name in names]
    assert any("avx2" in name for name in ran) and not any("avx512" in n or "amx" in n for n in ran)
    assert peer_line["onednn_kernels"] == {"convolution": ["jit:avx2"]}
