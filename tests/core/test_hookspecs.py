"""Every hook is part of the documented, typed plugin API."""

from __future__ import annotations

import inspect

import pytest

from tunplug import hookspecs

HOOKS = [
    (name, function)
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("tunplug_")
]


def test_hooks_exist():
    names = {name for name, _ in HOOKS}
    assert {
        "tunplug_register_tun_backends",
        "tunplug_register_dns_managers",
        "tunplug_register_crypto_backends",
        "tunplug_pipeline_stages",
        "tunplug_configured",
        "tunplug_tunnel_up",
        "tunplug_tunnel_down",
    } <= names


@pytest.mark.parametrize(("name", "function"), HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_is_documented_and_typed(name, function):
    doc = inspect.getdoc(function)
    assert doc and len(doc.split()) >= 15, f"{name} needs a docstring saying what it does"
    assert "called" in doc.lower(), f"{name}'s docstring must say when it is called"
    signature = inspect.signature(function)
    assert signature.return_annotation is not inspect.Signature.empty, name
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}({parameter.name})"
    assert hasattr(function, "tunplug_spec"), f"{name} lacks the @hookspec marker"


def test_every_function_in_hookspecs_is_a_prefixed_hook():
    functions = [
        name
        for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
        if inspect.getmodule(_) is hookspecs
    ]
    assert functions == [name for name, _ in HOOKS]
