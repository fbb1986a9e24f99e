#!/usr/bin/env python3
"""Compares two OpenAPI 3.0 documents as clients see them.

    scripts/openapi-compare.py OLD.json NEW.json

For every path and method: operationId, tags, summary, security, parameters (name, location,
required, schema), request body (required, content types, schema) and responses (status codes,
content types, schema). Schemas are compared after `$ref`s are resolved and `allOf`s merged, by
JSON type, format, nullable, enum, properties, required names, items, additional properties and
alternatives; descriptions and the names of components are not compared. A `format` the new
document adds to a type the old one left without (`int64` on an integer, `double` on a number)
is a refinement: listed apart, not a difference. Prints each difference and exits 1 when there
is any. A document is dumped with
`OPENAPI_DUMP=FILE cargo test --test it -- openapi::dump`.
"""

import json
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Flattener:
    """Schemas with `$ref`s resolved and `allOf`s merged, reduced to what clients rely on."""

    def __init__(self, doc):
        self.schemas = doc.get("components", {}).get("schemas", {})

    def flat(self, schema, seen=()):
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name in seen:
                return {"recursive": name}
            inner = self.flat(self.schemas.get(name, {"missing": name}), seen + (name,))
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return merge(inner, self.flat(rest, seen)) if rest else inner
        out = {}
        for key in ("type", "format", "nullable", "pattern", "minimum", "maximum", "minLength",
                    "maxLength", "maxItems"):
            if key in schema:
                out[key] = schema[key]
        if "enum" in schema:
            out["enum"] = sorted(schema["enum"], key=json.dumps)
        if "properties" in schema:
            out["properties"] = {k: self.flat(v, seen) for k, v in schema["properties"].items()}
        if schema.get("required"):
            out["required"] = sorted(schema["required"])
        if "items" in schema:
            out["items"] = self.flat(schema["items"], seen)
        if "additionalProperties" in schema:
            out["additionalProperties"] = self.flat(schema["additionalProperties"], seen)
        for key in ("oneOf", "anyOf"):
            if key in schema:
                out[key] = sorted((self.flat(s, seen) for s in schema[key]), key=json.dumps)
        for part in schema.get("allOf", []):
            out = merge(out, self.flat(part, seen))
        return out


def merge(a, b):
    out = dict(a)
    for key, value in b.items():
        if key == "properties":
            out["properties"] = {**out.get("properties", {}), **value}
        elif key == "required":
            out["required"] = sorted(set(out.get("required", [])) | set(value))
        else:
            out[key] = value
    return out


def operation_view(doc, flat, op):
    params = {}
    names = [(p["in"], p["name"]) for p in op.get("parameters", [])]
    if len(names) != len(set(names)):
        params["duplicates"] = sorted({n for n in names if names.count(n) > 1})
    for p in op.get("parameters", []):
        params[(p["in"], p["name"])] = {
            "required": p.get("required", False),
            "schema": flat.flat(p.get("schema", {})),
        }
    body = op.get("requestBody")
    if body is not None:
        body = {
            "required": body.get("required", False),
            "content": {t: flat.flat(c.get("schema", {}))
                        for t, c in body.get("content", {}).items()},
        }
    responses = {}
    for status, r in op.get("responses", {}).items():
        responses[status] = {t: flat.flat(c.get("schema", {}))
                             for t, c in r.get("content", {}).items()}
    return {
        "operationId": op.get("operationId"),
        "tags": op.get("tags"),
        "summary": op.get("summary"),
        "security": op.get("security"),
        "parameters": params,
        "requestBody": body,
        "responses": responses,
    }


REFINEMENTS = []


def diff(a, b, where, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key == "format" and key not in a and "type" in a:
                REFINEMENTS.append(f"{where}: format {b[key]} added")
            elif key not in a:
                out.append(f"{where} {key!s}: only in new: {json.dumps(b[key])[:200]}")
            elif key not in b:
                out.append(f"{where} {key!s}: only in old: {json.dumps(a[key])[:200]}")
            else:
                diff(a[key], b[key], f"{where} {key!s}", out)
    elif a != b:
        out.append(f"{where}: old {json.dumps(a)[:200]} new {json.dumps(b)[:200]}")


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    old, new = load(sys.argv[1]), load(sys.argv[2])
    differences = []
    for key in ("openapi",):
        if old.get(key) != new.get(key):
            differences.append(f"{key}: old {old.get(key)} new {new.get(key)}")
    for key in ("title", "description"):
        if old["info"].get(key) != new["info"].get(key):
            differences.append(f"info.{key} differs")
    if old.get("components", {}).get("securitySchemes") != new.get("components", {}).get(
            "securitySchemes"):
        differences.append("components.securitySchemes differ")
    old_tags = [t["name"] for t in old.get("tags", [])]
    new_tags = [t["name"] for t in new.get("tags", [])]
    if sorted(old_tags) != sorted(new_tags):
        differences.append(f"tags: old {old_tags} new {new_tags}")
    fo, fn = Flattener(old), Flattener(new)
    ops = set()
    for doc, which in ((old, 0), (new, 1)):
        for path, item in doc.get("paths", {}).items():
            for method in item:
                ops.add((path, method))
    for path, method in sorted(ops):
        a = old.get("paths", {}).get(path, {}).get(method)
        b = new.get("paths", {}).get(path, {}).get(method)
        if a is None or b is None:
            differences.append(f"{method.upper()} {path}: only in {'new' if a is None else 'old'}")
            continue
        diff(operation_view(old, fo, a), operation_view(new, fn, b),
             f"{method.upper()} {path}", differences)
    for line in differences:
        print(line)
    for line in REFINEMENTS:
        print(f"refinement: {line}")
    print(f"{len(ops)} operations compared, {len(differences)} differences, "
          f"{len(REFINEMENTS)} refinements")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
