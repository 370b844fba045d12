"""``/docs`` without the internet: the OpenAPI document as one self-contained HTML page.

FastAPI's own docs page (Swagger UI) loads its JavaScript and CSS from a CDN,
which a field server or an offline laptop cannot reach, and the Swagger UI
files are not a Python package we can ship. This page is rendered on the
server from the same OpenAPI document (``/openapi.json``): every path, its
parameters, request body and responses, with no script and no external
asset. Tools that want the machine-readable form read ``/openapi.json``.

Examples
--------
>>> spec = {"info": {"title": "t", "version": "1"}, "paths": {"/healthz": {"get": {"summary": "Health"}}}}
>>> "<h2" in docs_page(spec) and "/healthz" in docs_page(spec)
True
"""

from __future__ import annotations

from html import escape

__all__ = ["docs_page"]

_STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
h2{font:600 1em ui-monospace,monospace;margin:1.6em 0 .3em;padding:.4em .6em;background:#f3f3f3;border-radius:4px}
.m{display:inline-block;min-width:3.5em;font-weight:700;color:#fff;background:#456;padding:0 .4em;border-radius:3px}
.post{background:#2a7a3b}table{border-collapse:collapse;margin:.3em 0}td,th{border:1px solid #ddd;padding:.15em .5em;
text-align:left;vertical-align:top}code{font-family:ui-monospace,monospace}"""


def _type(schema: dict) -> str:
    """A parameter's type as one short string (``integer >= 0``, ``string | null``)."""
    if "anyOf" in schema:
        return " | ".join(_type(part) for part in schema["anyOf"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    text = schema.get("type", "object")
    if "enum" in schema:
        text += " (" + ", ".join(map(str, schema["enum"])) + ")"
    for key, sign in (("minimum", ">="), ("maximum", "<="), ("maxLength", "length <=")):
        if key in schema:
            text += f" {sign} {schema[key]}"
    return text


def _parameters(rows: list[tuple[str, str, str, str]]) -> str:
    if not rows:
        return ""
    cells = "".join(f"<tr><td><code>{escape(n)}</code></td><td>{escape(w)}</td><td>{escape(t)}</td>"
                    f"<td>{escape(d)}</td></tr>" for n, w, t, d in rows)
    return f"<table><tr><th>name</th><th>in</th><th>type</th><th>about</th></tr>{cells}</table>"


def _body_rows(operation: dict, schemas: dict) -> list[tuple[str, str, str, str]]:
    """The fields of a request body (form or JSON), as parameter rows."""
    rows = []
    for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
        schema = content.get("schema", {})
        schema = schemas.get(schema.get("$ref", "").rsplit("/", 1)[-1], schema)
        required = set(schema.get("required", ()))
        for name, field in schema.get("properties", {}).items():
            about = field.get("description", "") + (" (required)" if name in required else "")
            rows.append((name, media_type, _type(field), about.strip()))
    return rows


def _operation(path: str, method: str, operation: dict, schemas: dict) -> str:
    rows = [(p["name"], p["in"], _type(p.get("schema", {})), p.get("description", "") +
             (" (required)" if p.get("required") else "")) for p in operation.get("parameters", [])]
    rows += _body_rows(operation, schemas)
    answers = ", ".join(f"{code} {escape(answer.get('description', ''))}"
                        for code, answer in operation.get("responses", {}).items())
    return (f"<h2><span class='m {method}'>{method.upper()}</span> {escape(path)}</h2>"
            f"<p>{escape(operation.get('description') or operation.get('summary', ''))}</p>"
            f"{_parameters(rows)}<p><small>responses: {answers}</small></p>")


def docs_page(spec: dict) -> str:
    """The HTML reference of an OpenAPI document."""
    schemas = spec.get("components", {}).get("schemas", {})
    parts = [_operation(path, method, operation, schemas)
             for path, methods in spec.get("paths", {}).items() for method, operation in methods.items()]
    info = spec.get("info", {})
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_STYLE}</style>"
            f"</head><body><h1>{title}</h1><p>{escape(info.get('description', ''))}</p>"
            f"<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. Writes need the "
            f"<code>X-API-Key</code> header when the server has a key.</p>{''.join(parts)}</body></html>")
