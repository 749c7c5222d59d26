"""One ``avs::SelectiveScan`` contract, four spellings that must agree: the README's tables, the Python identity
(``plugins/scan_contract.py``), the ONNX schema the exporter registers, and the C++ constants
(``selectiveScanContract.h``, read through ``libavs_scan_plugin_logic.so``'s ctypes ABI). Also the one role rule:
inputs are read by position.
"""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest
import torch
from onnx import defs

import plugins
from export.ops.selective_scan import OP_NAME
from export.ops.selective_scan_onnx import register_onnx_schema
from plugins import scan_contract as contract

README = Path(__file__).resolve().parents[1] / "plugins" / "selective_scan" / "README.md"


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """Cells of the first table under ``## heading``, header and separator rows left out."""
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip()[1:-1].split("|")] for row in rows[2:]]


@pytest.fixture(scope="module")
def readme() -> dict:
    """What the README states: identity, inputs (name, fp32-only, optional), output, attribute defaults."""
    text = README.read_text()
    title = re.match(r"# (\w+) \(`(\w+)::(\w+)`, version (\d+)\)", text)
    node = re.search(r"op_type `(\w+)`, domain `(\w+)` \(opset import `(\w+)` version (\d+)", text)
    plugin = re.search(r"plugin named `(\w+)`,\s+namespace `(\w+)`, version `\"(\w+)\"`", text)
    assert title and node and plugin, "the README's title or its 'Parameters' sentences changed form"
    inputs = _table_rows(text, "Structure")
    assert [int(row[0]) for row in inputs] == list(range(len(inputs)))
    params = _table_rows(text, "Parameters")
    return {
        "op": {title.group(1), title.group(3), node.group(1), plugin.group(1)},
        "domain": {title.group(2), node.group(2), node.group(3), plugin.group(2)},
        "version": {title.group(4), node.group(4), plugin.group(3)},
        "inputs": [(row[1].strip("`"), row[3] == "float32", row[4] == "optional") for row in inputs],
        "output": re.search(r"Output: `(\w+)`", text).group(1),
        "attributes": {row[1].strip("`"): None if row[4] == "—" else int(row[4]) for row in params},
    }


class ContractAbi:
    """ctypes view of the avsScanContract* functions."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)

    def identity(self) -> dict:
        op, domain, version, namespace, output = (ctypes.c_char_p() for _ in range(5))
        opset = ctypes.c_int32()
        self.lib.avsScanContractIdentity(ctypes.byref(op), ctypes.byref(domain), ctypes.byref(opset),
                                         ctypes.byref(version), ctypes.byref(namespace), ctypes.byref(output))
        return {"op": op.value.decode(), "domain": domain.value.decode(), "opset": opset.value,
                "plugin_version": version.value.decode(), "plugin_namespace": namespace.value.decode(),
                "output": output.value.decode()}

    def inputs(self) -> list[tuple[str, bool, bool]]:
        """(name, float32 only, optional) per slot."""
        found, slot = [], 0
        name, optional, float32 = ctypes.c_char_p(), ctypes.c_int32(), ctypes.c_int32()
        while not self.lib.avsScanContractInput(slot, ctypes.byref(name), ctypes.byref(optional),
                                                ctypes.byref(float32)):
            found.append((name.value.decode(), bool(float32.value), bool(optional.value)))
            slot += 1
        return found

    def attributes(self) -> dict:
        softplus, version, namespace = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_char_p()
        default = ctypes.c_int32()
        self.lib.avsScanContractAttributes(ctypes.byref(softplus), ctypes.byref(default), ctypes.byref(version),
                                           ctypes.byref(namespace))
        return {softplus.value.decode(): default.value, version.value.decode(): None, namespace.value.decode(): None}

    def roles(self, present: list[bool]) -> dict[str, int] | str:
        """Slot name -> input index for a node whose input i has a value iff present[i], or the error message."""
        slots, message = (ctypes.c_int32 * 8)(*[-9] * 8), ctypes.create_string_buffer(512)
        flags = (ctypes.c_int32 * max(len(present), 1))(*present)
        if self.lib.avsScanContractResolveInputs(len(present), flags, slots, message, 512):
            return message.value.decode()
        return {contract.INPUT_NAMES[s]: slots[s] for s in range(8) if slots[s] >= 0}


@pytest.fixture(scope="module")
def abi() -> ContractAbi:
    return ContractAbi(plugins.logic_library_path())


def _python_inputs() -> list[tuple[str, bool, bool]]:
    return [(name, name in contract.FLOAT32_INPUTS, i >= contract.REQUIRED_INPUTS)
            for i, name in enumerate(contract.INPUT_NAMES)]


def test_readme_states_the_python_identity(readme):
    assert readme["op"] == {contract.OP_TYPE}
    assert readme["domain"] == {contract.DOMAIN, contract.PLUGIN_NAMESPACE}
    assert readme["version"] == {str(contract.OPSET_VERSION), contract.PLUGIN_VERSION}
    assert readme["inputs"] == _python_inputs()
    assert (readme["output"],) == contract.OUTPUT_NAMES
    assert readme["attributes"] == contract.ATTRIBUTE_DEFAULTS


def test_cpp_constants_equal_the_python_identity(abi):
    assert abi.identity() == {"op": contract.OP_TYPE, "domain": contract.DOMAIN, "opset": contract.OPSET_VERSION,
                              "plugin_version": contract.PLUGIN_VERSION, "plugin_namespace": contract.PLUGIN_NAMESPACE,
                              "output": contract.OUTPUT_NAMES[0]}
    assert abi.inputs() == _python_inputs()
    assert abi.attributes() == contract.ATTRIBUTE_DEFAULTS


def test_onnx_schema_is_the_python_identity():
    register_onnx_schema()
    schema = defs.get_schema(contract.OP_TYPE, contract.OPSET_VERSION, contract.DOMAIN)
    optional = defs.OpSchema.FormalParameterOption.Optional
    inputs = [(p.name, p.type_str == "tensor(float)", p.option == optional) for p in schema.inputs]
    assert inputs == _python_inputs()
    assert tuple(p.name for p in schema.outputs) == contract.OUTPUT_NAMES
    assert set(schema.attributes) == set(contract.ATTRIBUTE_DEFAULTS)
    assert not any(a.required for a in schema.attributes.values())


def test_torch_op_takes_the_inputs_in_contract_order():
    assert OP_NAME == f"{contract.DOMAIN}::selective_scan"
    arguments = [a.name for a in torch.ops.avs.selective_scan.default._schema.arguments]
    assert arguments == [*contract.INPUT_NAMES, "delta_softplus"]


def test_node_attributes_cover_every_attribute():
    assert set(contract.node_attributes()) == set(contract.ATTRIBUTE_DEFAULTS)
    assert contract.node_attributes(True)["delta_softplus"] == 1


# --- the role rule: by position ------------------------------------------------------------------------------------

def test_a_full_node_fills_every_slot_in_order(abi):
    assert abi.roles([True] * 8) == {name: i for i, name in enumerate(contract.INPUT_NAMES)}


@pytest.mark.parametrize("count", [5, 6, 7])
def test_trailing_optional_inputs_may_be_left_off(abi, count):
    assert abi.roles([True] * count) == {name: i for i, name in enumerate(contract.INPUT_NAMES[:count])}


def test_an_empty_name_keeps_the_later_inputs_in_their_slots(abi):
    roles = abi.roles([True] * 5 + [False, False, True])
    assert roles == {**{name: i for i, name in enumerate(contract.INPUT_NAMES[:5])}, "delta_bias": 7}


@pytest.mark.parametrize("present,message", [
    ([True] * 4, "expected 5 to 8 inputs"),
    ([True] * 9, "expected 5 to 8 inputs"),
    ([True, True, True, False, True], "input 'B' is required"),
    ([False] + [True] * 7, "input 'u' is required"),
])
def test_bad_input_lists_are_explained(abi, present, message):
    result = abi.roles(present)
    assert isinstance(result, str) and message in result, result
