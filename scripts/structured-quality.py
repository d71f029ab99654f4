#!/usr/bin/env python3
"""How many answers parse as JSON and validate against their schema, without and with
`response_format` json_schema, on the 20 cases of examples/tests/structured_client.py, asked of
a running `gac serve` (one member or an ensemble). Needs the venv of `scripts/fetch-assets
client` (openai, jsonschema).

usage: $GAC_CACHE/venv/bin/python scripts/structured-quality.py http://127.0.0.1:8080/v1
"""
import json
import os
import sys

import jsonschema
import openai

# The cases, read from the test that checks them (everything before its first request).
here = os.path.dirname(os.path.abspath(__file__))
source = open(os.path.join(here, "..", "examples", "tests", "structured_client.py")).read()
exec(source[source.index("name = {") : source.index("assert len(CASES)")])

client = openai.OpenAI(base_url=sys.argv[1], api_key=os.environ.get("GAC_API_KEY", "unused"))
model = client.models.list().data[0].id
for constrained in (False, True):
    parsed = valid = 0
    for i, (prompt, schema) in enumerate(CASES):
        extra = {}
        if constrained:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": f"case{i}", "schema": schema}}
        ask = f"{prompt}\nAnswer with JSON only, valid against this JSON schema: {json.dumps(schema)}"
        text = client.chat.completions.create(
            model=model, max_tokens=128, temperature=0, messages=[{"role": "user", "content": ask}], **extra
        ).choices[0].message.content
        try:
            value = json.loads(text)
            parsed += 1
            jsonschema.validate(value, schema)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    print(f"{'json_schema' if constrained else 'free text'}: {parsed} of 20 parse, {valid} validate")
