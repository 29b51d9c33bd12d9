"""The JSON Schema, OpenAPI document and docs page of a served program (used by :mod:`lmgraph.serve`).

Built from the program alone: its declared inputs (types, and the description the first node
reading each input gives that field) and its outputs (the type of the node field each one names).
Nothing here imports the web framework.
"""

from __future__ import annotations

import copy
import html
import json
import typing
from typing import TYPE_CHECKING, Any

from .signatures import literal_options, type_to_str

if TYPE_CHECKING:
    from .pipeline.program import Program


def _input_descriptions(program: Program) -> dict[str, str]:
    """Each program input's description: the ``desc`` of the first node field it is bound to."""
    from .pipeline.ir import INPUT, Ref

    out: dict[str, str] = {}
    for node in program.nodes:
        for field, binding in node.bindings:
            if isinstance(binding, Ref) and binding.node == INPUT and binding.field not in out:
                spec = node.module.signature.input(field)
                if spec is not None and spec.desc:
                    out[binding.field] = spec.desc
    return out


def output_types(program: Program) -> dict[str, Any]:
    """Each program output's annotation: the type of the node output field it names."""
    out = {}
    for name, ref in program.output_refs:
        spec = program.node_map[ref.node].module.signature.output(ref.field)
        out[name] = spec.annotation if spec is not None else Any
    return out


def _object_schema(fields: dict[str, Any], descriptions: dict[str, str], *, title: str, mode: str) -> dict[str, Any]:
    """A JSON Schema object with one required property per field (pydantic's schema of each type,
    shared definitions under ``$defs``)."""
    import pydantic
    import typing_extensions  # pydantic's own dependency; typing.TypedDict is refused before Python 3.12

    annotated = {name: (typing.Annotated[ann, pydantic.Field(description=descriptions[name])]
                        if descriptions.get(name) else ann) for name, ann in fields.items()}
    # a TypedDict built from a dict: any field name works (no clash with BaseModel's attributes)
    td = typing_extensions.TypedDict("Fields", annotated)  # type: ignore[misc]
    schema = pydantic.TypeAdapter(td).json_schema(mode=mode)  # type: ignore[arg-type]
    schema["title"] = title
    schema["additionalProperties"] = False
    return schema


def program_schema(program: Program) -> dict[str, Any]:
    """``{"program", "content_hash", "input_schema", "output_schema"}``: JSON Schemas of what
    ``POST /invoke`` takes and what its ``outputs`` hold."""
    return {
        "program": program.name,
        "content_hash": program.content_hash(),
        "input_schema": _object_schema(dict(program.input_specs), _input_descriptions(program),
                                       title=f"{program.name} inputs", mode="validation"),
        "output_schema": _object_schema(output_types(program), {}, title=f"{program.name} outputs",
                                        mode="serialization"),
    }


def example_inputs(program: Program) -> dict[str, Any]:
    """A plausible input object for the docs page (a Literal's first option, an empty list...)."""
    out: dict[str, Any] = {}
    for name, ann in program.input_specs.items():
        options = literal_options(ann)
        origin = typing.get_origin(ann)
        if options:
            out[name] = options[0]
        elif ann is str:
            out[name] = "..."
        elif ann is bool:
            out[name] = False
        elif ann in (int, float):
            out[name] = 0
        elif ann in (list, tuple) or origin in (list, tuple):
            out[name] = []
        elif ann is dict or origin is dict:
            out[name] = {}
        else:
            out[name] = None
    return out


def _hoist(schema: dict[str, Any], into: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` moved into OpenAPI's components (``into``) and refs rewritten."""
    schema = copy.deepcopy(schema)
    for name, sub in schema.pop("$defs", {}).items():
        into.setdefault(name, sub)

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" and isinstance(v, str)
                        else fix(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    for sub in into.values():
        sub.update(fix(sub))
    fixed: dict[str, Any] = fix(schema)
    return fixed


def openapi(program: Program) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the served endpoints, with the program's own schemas."""
    s = program_schema(program)
    comps: dict[str, Any] = {}
    inputs, outputs = _hoist(s["input_schema"], comps), _hoist(s["output_schema"], comps)
    comps.update({
        "Inputs": inputs, "Outputs": outputs,
        "Error": {"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string", "description": "the error's type (InputError, Timeout, Overloaded...)"},
            "message": {"type": "string"}, "field": {"type": ["string", "null"]},
            "node": {"type": ["string", "null"]}}},
        "InvokeResult": {"type": "object", "required": ["outputs"], "properties": {
            "outputs": {"$ref": "#/components/schemas/Outputs"},
            "usage": {"type": "object"}, "latency_s": {"type": "number"},
            "trace": {"type": "object", "description": "the run's trace (with ?trace=1)"}}},
        "BatchRow": {"type": "object", "required": ["index"], "properties": {
            "index": {"type": "integer"}, "outputs": {"$ref": "#/components/schemas/Outputs"},
            "error": {"$ref": "#/components/schemas/Error"}, "trace": {"type": "object"}}},
    })
    ref = {"$ref": "#/components/schemas/Inputs"}
    err = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    trace_q = [{"name": "trace", "in": "query", "required": False, "schema": {"type": "string", "enum": ["0", "1"]},
                "description": "1: add the run's trace"}]
    busy = {"description": "too many requests in flight; retry after the Retry-After header's seconds",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}}, "content": err}
    paths = {
        "/invoke": {"post": {
            "summary": "run the program once", "parameters": trace_q,
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
            "responses": {"200": {"description": "the outputs", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/InvokeResult"}}}},
                "422": {"description": "bad input (the field is named)", "content": err},
                "429": busy, "504": {"description": "the run took longer than the timeout", "content": err},
                "500": {"description": "the run failed", "content": err},
                "502": {"description": "the model backend failed", "content": err}}}},
        "/batch": {"post": {
            "summary": "run the program on many inputs; a failing row is recorded, never failing the batch",
            "parameters": trace_q,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"type": "array", "items": ref}}}},
            "responses": {"200": {"description": "one result per row, in order", "content": {"application/json": {
                "schema": {"type": "object", "properties": {
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/BatchRow"}},
                    "failed": {"type": "integer"}}}}}},
                "413": {"description": "more rows than the server takes", "content": err},
                "422": {"description": "the body is not a list of objects", "content": err}, "429": busy}}},
        "/stream": {"post": {
            "summary": "run once, as server-sent events: node_start, node_end, (token), outputs (or error)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
            "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {}}},
                          "422": {"description": "bad input", "content": err}, "429": busy}}},
        "/schema": {"get": {"summary": "JSON Schemas of the inputs and outputs",
                            "responses": {"200": {"description": "the schemas"}}}},
        "/health": {"get": {"summary": "liveness and load", "responses": {"200": {"description": "ok"}}}},
    }
    return {"openapi": "3.1.0",
            "info": {"title": f"lmgraph: {program.name}", "version": program.content_hash()[:12],
                     "description": f"The lmgraph program {program.name!r} served over HTTP."},
            "paths": paths, "components": {"schemas": comps}}


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222 }}
pre, textarea {{ font: 13px/1.4 ui-monospace, monospace; background: #f6f6f6; padding: .7em; border-radius: 4px;
  overflow-x: auto }}
textarea {{ width: 100%; height: 7em; box-sizing: border-box; border: 1px solid #ccc }}
table {{ border-collapse: collapse }} td, th {{ border-bottom: 1px solid #ddd; padding: .3em .8em; text-align: left }}
code {{ background: #f0f0f0; padding: 0 .2em }}
</style></head><body>
<h1>{title}</h1>
<p>Content hash <code>{hash}</code>. The machine-readable description: <a href="openapi.json">openapi.json</a>;
input and output schemas: <a href="schema">schema</a>.</p>
<h2>Endpoints</h2>
<table><tr><th>method</th><th>path</th><th>what</th></tr>{rows}</table>
<h2>The program</h2>
<pre>{render}</pre>
<h2>Inputs</h2><pre>{inputs}</pre>
<h2>Outputs</h2><pre>{outputs}</pre>
<h2>Try it</h2>
<textarea id="body">{example}</textarea>
<p><button id="go">POST /invoke?trace=0</button></p>
<pre id="out">(the response appears here)</pre>
<h2>From the shell</h2>
<pre>curl -s -X POST http://HOST:PORT/invoke -H 'content-type: application/json' -d '{example_sh}'</pre>
<script>
document.getElementById("go").onclick = async () => {{
  const out = document.getElementById("out");
  try {{
    const r = await fetch("invoke", {{method: "POST", headers: {{"content-type": "application/json"}},
                                     body: document.getElementById("body").value}});
    out.textContent = r.status + "\\n" + JSON.stringify(await r.json(), null, 2);
  }} catch (e) {{ out.textContent = String(e); }}
}};
</script>
</body></html>
"""


def docs_page(program: Program) -> str:
    """A self-contained HTML page (no CDN, no external script): endpoints, schemas, a form."""
    s = program_schema(program)
    doc = openapi(program)
    rows = "".join(f"<tr><td>{m.upper()}</td><td><code>{html.escape(p)}</code></td>"
                   f"<td>{html.escape(op['summary'])}</td></tr>"
                   for p, ops in doc["paths"].items() for m, op in ops.items())
    rows += ("<tr><td>GET</td><td><code>/openapi.json</code></td><td>this API as OpenAPI 3.1</td></tr>"
             "<tr><td>GET</td><td><code>/docs</code></td><td>this page</td></tr>")
    example = json.dumps(example_inputs(program), ensure_ascii=False)
    types = ", ".join(f"{k}: {type_to_str(v)}" for k, v in program.input_specs.items())
    return _PAGE.format(
        title=html.escape(f"lmgraph: {program.name} ({types})"), hash=html.escape(program.content_hash()),
        rows=rows, render=html.escape(program.render("text")),
        inputs=html.escape(json.dumps(s["input_schema"], indent=2, ensure_ascii=False)),
        outputs=html.escape(json.dumps(s["output_schema"], indent=2, ensure_ascii=False)),
        example=html.escape(example), example_sh=html.escape(example.replace("'", "'\\''")))
