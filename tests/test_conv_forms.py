"""Each paper conv's form (oneDNN's conv or the matmul form) is chosen by timing both, the faster is kept, the
choice is recorded in config.json and a resumed run keeps it; an explicit --conv_kernels wins. Every timer here is
a fake (a table of seconds): no test depends on how fast this machine is."""

import json

import numpy as np
import pytest

from dcgan_tf import conv_forms, fast_path, kernels
from dcgan_tf.config import Config, ConfigError
from dcgan_tf.gan import build_gan

CONFIG = Config(image_size=16, channels=1, ngf=8, ndf=8, nz=16, batch_size=8, train_steps=2, kernel_cache_dir="",
                mixed_precision="none", jit_compile="false")
LAYERS = conv_forms.paper_convs(CONFIG)
CHOOSABLE = [layer.name for layer in LAYERS if conv_forms.choosable(layer)]


def table_timer(seconds: dict[str, dict[str, float]], calls: list | None = None) -> conv_forms.Timer:
    """A timer that reports `seconds[layer][form]` for every call (and records the calls)."""
    def timer(layer, form, run):
        if calls is not None:
            calls.append((layer.name, form))
        return seconds[layer.name][form]
    return timer


def favouring(form: str) -> conv_forms.Timer:
    """A fake timer under which `form` is 10x faster on every layer."""
    return table_timer({name: {f: 1.0 if f == form else 10.0 for f in conv_forms.FORMS} for name in CHOOSABLE})


def test_layers_are_the_networks_convs_with_their_shapes():
    gan = build_gan(CONFIG.replace(channels=1))
    built = {layer.name: layer for net in (gan.generator, gan.discriminator) for layer in net.layers}
    for layer in LAYERS:
        in_shape, kernel_shape, _ = layer.shapes
        assert tuple(built[layer.name].kernel.shape) == tuple(kernel_shape), layer
        assert tuple(built[layer.name].input.shape[1:]) == tuple(in_shape), layer
    assert "conv1" not in CHOOSABLE  # it follows D's input layer (kernels.Layers.conv)


@pytest.mark.parametrize("seed", range(4))
def test_a_planted_slower_form_is_never_chosen(seed):
    rng = np.random.default_rng(seed)
    slow = {name: conv_forms.FORMS[rng.integers(2)] for name in CHOOSABLE}  # the planted slower form per layer
    seconds = {name: {form: 5.0 if form == slow[name] else 1.0 + rng.random() for form in conv_forms.FORMS}
               for name in CHOOSABLE}
    calls = []
    timings = conv_forms.measure(LAYERS, 8, conv_forms.compute_dtype("none"), timer=table_timer(seconds, calls))
    chosen = conv_forms.fastest(timings)
    assert set(chosen) == set(CHOOSABLE)
    assert all(chosen[name] != slow[name] for name in CHOOSABLE)
    # Both forms of every choosable layer were timed, interleaved, the same number of times.
    assert sorted(set(calls)) == sorted((n, f) for n in CHOOSABLE for f in conv_forms.FORMS)
    assert calls[:2] == [(CHOOSABLE[0], "onednn"), (CHOOSABLE[0], "matmul")]


def test_a_tie_keeps_onednn():
    assert conv_forms.fastest({"conv0": {"onednn": 1.0, "matmul": 1.0}}) == {"conv0": "onednn"}


def test_the_choice_is_recorded_restored_on_resume_and_overridden_explicitly(monkeypatch):
    monkeypatch.setattr(conv_forms, "time_pass", favouring("matmul"))
    first = fast_path.resolve(CONFIG, environ={})
    assert first.conv_forms == {layer.name: "matmul" if layer.name in CHOOSABLE else "onednn" for layer in LAYERS}
    assert "timed now" in first.resolved["conv_forms_reason"]
    assert all(f"{name} onednn 1e+04 ms, matmul 1e+03 ms" in first.resolved["conv_forms_ms"] for name in CHOOSABLE)
    saved = Config.from_dict(json.loads(first.to_json()))  # as config.json holds it
    # The machine now favours oneDNN: a new run follows it, the resumed run keeps computing as it started.
    monkeypatch.setattr(conv_forms, "time_pass", favouring("onednn"))
    assert set(fast_path.resolve(CONFIG, environ={}).conv_forms.values()) == {"onednn"}
    resumed = fast_path.resolve(CONFIG, saved=saved, environ={})
    assert resumed.conv_forms == first.conv_forms and "resumed run" in resumed.resolved["conv_forms_reason"]
    # An explicit request wins, on resume too; a per-layer one changes only that layer.
    assert set(fast_path.resolve(CONFIG.replace(conv_kernels="onednn"), saved=saved,
                                 environ={}).conv_forms.values()) == {"onednn"}
    one = fast_path.resolve(CONFIG.replace(conv_kernels="deconv1=onednn"), saved=saved, environ={}).conv_forms
    assert one == {**first.conv_forms, "deconv1": "onednn"}


def test_explicit_values_need_no_timing(monkeypatch):
    def no_timing(*args):
        raise AssertionError("timed although the forms were given")
    monkeypatch.setattr(conv_forms, "time_pass", no_timing)
    assert fast_path.resolve(CONFIG.replace(conv_kernels="matmul"), environ={}).conv_forms["conv0"] == "matmul"
    size = fast_path.resolve(CONFIG.replace(conv_kernels="size"), environ={}).conv_forms
    assert size == {layer.name: "matmul" if layer.name in CHOOSABLE and kernels.uses_matmul_conv(layer.small)
                    else "onednn" for layer in LAYERS}


@pytest.mark.parametrize("spec,message", [("fastest", "must be one of auto, onednn, matmul, size"),
                                          ("conv9=matmul", "LAYER one of conv0"),
                                          ("conv0=cudnn", "FORM onednn or matmul"),
                                          ("conv1=matmul", "conv1 has no matmul form")])
def test_bad_conv_kernels_values_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        fast_path.resolve(CONFIG.replace(conv_kernels=spec), environ={})


def test_timings_are_cached_per_machine_isa_and_shape(tmp_path):
    config = CONFIG.replace(kernel_cache_dir=str(tmp_path))
    calls = []
    timer = table_timer({name: {"onednn": 2.0, "matmul": 1.0} for name in CHOOSABLE}, calls)
    forms, reason, _ = conv_forms.choose(config, "none", 8, False, "AVX2", timer)
    assert calls and "timed now" in reason and (tmp_path / conv_forms.CACHE_FILE).exists()
    calls.clear()
    again, reason, _ = conv_forms.choose(config, "none", 8, False, "AVX2", timer)
    assert again == forms and not calls and "cached timings" in reason
    conv_forms.choose(config, "none", 8, False, None, timer)  # another ISA cap: another machine kind
    assert len(calls) == 2 * conv_forms.REPEATS * len(CHOOSABLE)
    calls.clear()
    conv_forms.choose(config, "none", 4, False, "AVX2", timer)  # another batch: other shapes
    assert calls


def test_the_built_networks_use_the_chosen_forms():
    forms = {name: "matmul" for name in CHOOSABLE}
    gan = build_gan(CONFIG, conv_forms=forms)
    built = {layer.name: layer for net in (gan.generator, gan.discriminator) for layer in net.layers}
    assert all(built[layer.name].form == forms.get(layer.name, "onednn") for layer in LAYERS)


def test_train_records_logs_and_resumes_the_choice(tmp_path, monkeypatch, caplog):
    from dcgan_tf import train

    monkeypatch.setattr(conv_forms, "time_pass", favouring("matmul"))
    config = CONFIG.replace(dataset="synthetic", train_steps=1, log_every=1, sample_every=1, checkpoint_every=1,
                            num_samples=4, model_dir=str(tmp_path / "run"), verbose=0)
    with caplog.at_level("INFO"), caplog.at_level("INFO", logger="absl"):
        train.train(config)
    first = json.load(open(tmp_path / "run" / "config.json"))["resolved"]
    assert "conv0=matmul" in first["conv_forms"]
    assert "Conv kernels (requested auto): matmul form for conv0" in caplog.text
    monkeypatch.setattr(conv_forms, "time_pass", favouring("onednn"))
    train.train(config.replace(train_steps=2))
    resumed = json.load(open(tmp_path / "run" / "config.json"))["resolved"]
    assert resumed["conv_forms"] == first["conv_forms"]
