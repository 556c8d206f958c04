"""Every seed in ``fuzz/corpus/<target>/`` and every input that once crashed a fuzzer
(``fuzz/crashes/<target>/``, kept forever) goes through its harness's one-input function, as
plain pytest without atheris: the harness's own checks are the assertions."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz.targets import TARGETS, load
from fuzz.targets.wgquick import HANDLED as WGQUICK_HANDLED

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


def inputs(kind: str) -> list[pytest.ParameterSet]:
    return [
        pytest.param(target, path, id=f"{target}/{path.name}")
        for target in TARGETS
        if (FUZZ / kind / target).is_dir()
        for path in sorted((FUZZ / kind / target).iterdir())
    ]


def test_every_target_has_a_seed_corpus() -> None:
    for target in TARGETS:
        assert len(list((FUZZ / "corpus" / target).iterdir())) >= 2, target


@pytest.mark.parametrize(("target", "path"), inputs("corpus"))
def test_corpus_input_is_handled(target: str, path: Path) -> None:
    load(target)(path.read_bytes())


@pytest.mark.parametrize(("target", "path"), inputs("crashes"))
def test_input_that_once_crashed_is_handled(target: str, path: Path) -> None:
    load(target)(path.read_bytes())


def test_a_harness_lets_undocumented_exceptions_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay would pass vacuously if a harness swallowed everything."""
    from tunplug import wgquick

    def broken(text: str, source: str = "") -> None:
        raise RuntimeError("not part of the contract")

    monkeypatch.setattr(wgquick, "parse_wg_quick", broken)
    with pytest.raises(RuntimeError):
        load("wgquick")(b"[Interface]\n")
    assert RuntimeError not in WGQUICK_HANDLED


def test_the_wireguard_seeds_deliver_data() -> None:
    """The derived messages are valid: a seed that replays them gets packets through, so the
    fuzzer starts behind mac1 and the AEAD."""
    from fuzz.targets import wireguard

    messages = wireguard.messages()
    device = wireguard.device_d()
    device.decrypt([(messages.response, wireguard.P_ADDR)], wireguard.START)
    out = device.decrypt([(messages.transport, wireguard.P_ADDR)], wireguard.START)
    assert [packet[-11:] for packet in out.to_tun] == [b"data from P"]
    assert not device.drops
