"""Structured outputs through the official OpenAI Python client against a running `gac serve`
(run by examples/tests/serve.rs). Answers are checked with the `jsonschema` package, not by
the code that constrained them.

usage: structured_client.py BASE_URL MODEL
Every check raises on failure; the last line printed is "ok".
"""

import json
import sys

import jsonschema
import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused")

name = {"type": "string", "minLength": 1, "maxLength": 24}
small = {"type": "integer", "minimum": 0, "maximum": 200}


def record(**properties):
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def listing(item, most):
    return {"type": "array", "items": item, "minItems": 1, "maxItems": most}


# 20 prompts, each with its own schema: records, enums, arrays, booleans, bounded integers,
# nesting and constants.
CASES = [
    ("Give the name and age of a famous scientist.", record(name=name, age=small)),
    ("What is the capital of France?", record(capital=name)),
    ("Is the sky blue? Answer with a boolean.", record(answer={"type": "boolean"})),
    ("Classify the sentiment of: I love this film.", record(sentiment={"enum": ["positive", "negative", "neutral"]})),
    ("List three colours of the rainbow.", record(colours=listing(name, 3))),
    ("How many legs does a spider have?", record(legs=small)),
    ("Describe a dog with a name and a breed.", record(name=name, breed=name)),
    ("Give a city and its country.", record(city=name, country=name)),
    ("Name two primary colours.", listing({"enum": ["red", "yellow", "blue"]}, 2)),
    ("Rate this answer from 1 to 5: Paris is the capital of France.", record(rating={"type": "integer", "minimum": 1, "maximum": 5})),
    ("Give a book title and its author.", record(book=record(title=name, author=name))),
    ("Is 7 a prime number?", record(prime={"type": "boolean"}, number={"const": 7})),
    ("Pick the odd one out: apple, banana, carrot.", record(odd={"enum": ["apple", "banana", "carrot"]})),
    ("What day comes after Monday?", record(day={"enum": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]})),
    ("Give a person with a first and a last name.", record(first=name, last=name)),
    ("How many days are there in a week?", {"type": "integer", "minimum": 0, "maximum": 10}),
    ("Name a planet of the solar system.", name),
    ("Give the temperature at which water boils, in Celsius.", record(celsius=small, unit={"const": "C"})),
    ("List up to four animals that live in the sea.", record(animals=listing(name, 4), count=small)),
    ("Translate 'hello' into French.", record(language={"enum": ["French"]}, text=name)),
]
assert len(CASES) == 20 and len({json.dumps(s) for _, s in CASES}) == 20

for i, (prompt, schema) in enumerate(CASES):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=128,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": f"case{i}", "schema": schema, "strict": True}},
    )
    text = r.choices[0].message.content
    print(f"{i:2} {prompt!r} -> {text}")
    jsonschema.validate(json.loads(text), schema)
    assert r.choices[0].finish_reason == "stop", r

# JSON mode: an object (these small models can go on adding keys until max_tokens: then the
# text is the start of one).
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Give the name and colour of a cat as JSON."}],
    max_tokens=128,
    temperature=0,
    response_format={"type": "json_object"},
)
text = r.choices[0].message.content
print(f"json_object -> {text} ({r.choices[0].finish_reason})")
if r.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(text), dict), text
else:
    assert r.choices[0].finish_reason == "length" and text.startswith("{"), r

# A grammar (llama-server's field name) that allows only yes or no.
for prompt in ["Is water wet?", "Is fire cold?", "Can fish fly?", "Is Paris in France?"]:
    r = client.completions.create(
        model=model, prompt=f"Question: {prompt}\nAnswer:", max_tokens=8, temperature=0.8, seed=3,
        extra_body={"grammar": 'start: "yes" | "no"'},
    )
    print(f"yes/no {prompt!r} -> {r.choices[0].text!r}")
    assert r.choices[0].text in ("yes", "no"), r

# An invalid schema is a 400 that names the field and the problem.
try:
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "objekt"}}},
    )
    raise AssertionError("an invalid schema was accepted")
except openai.BadRequestError as e:
    message = str(e)
    print(f"invalid schema -> {message}")
    assert "response_format" in message and "objekt" in message, message

print("ok")
