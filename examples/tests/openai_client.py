"""The official OpenAI Python client against a running `gac serve` (run by examples/tests/serve.rs).

usage: openai_client.py BASE_URL MODEL
Every check raises on failure; the last line printed is "ok".
"""

import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused")

# A whole completion, greedy.
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
text = c.choices[0].text
assert text, c
assert c.choices[0].finish_reason in ("stop", "length"), c
assert c.usage.completion_tokens > 0 and c.usage.prompt_tokens > 0, c.usage

# The same, streamed: the chunks spell the same text.
chunks = list(client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True))
assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == text, chunks
assert chunks[-1].choices[0].finish_reason == c.choices[0].finish_reason, chunks[-1]

# Chat, whole and streamed.
messages = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a colour of the rainbow."},
]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
answer = r.choices[0].message.content
assert r.choices[0].message.role == "assistant" and answer, r
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
)
parts, usage = [], None
for ch in stream:
    if ch.choices and ch.choices[0].delta.content:
        parts.append(ch.choices[0].delta.content)
    if ch.usage:
        usage = ch.usage
assert "".join(parts) == answer, (parts, answer)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage

# Stop strings cut the text before them.
s = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[" 6"])
assert " 6" not in s.choices[0].text and s.choices[0].finish_reason == "stop", s

# Seeded sampling is reproducible; another seed may differ.
def sample(seed):
    return client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=seed
    ).choices[0].text

assert sample(7) == sample(7)

# Logprobs of the combined distribution: greedy picks the most probable token.
lp = client.chat.completions.create(
    model=model, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
).choices[0].logprobs.content
assert lp, lp
for t in lp:
    assert t.logprob <= 0 and len(t.top_logprobs) == 3, t
    assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6 and t.top_logprobs[0].token == t.token, t
    assert bytes(t.bytes).decode("utf-8", "replace") == t.token, t

# Errors come back as OpenAI errors.
try:
    client.completions.create(model=model, prompt="x", max_tokens=4, n=2)
    raise AssertionError("n=2 accepted")
except openai.BadRequestError as e:
    assert "n" in str(e), e
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=4)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e), e

# A response format gac does not know is refused, named (structured outputs are tested in
# structured_client.py); a developer message is a system message.
try:
    client.chat.completions.create(
        model=model, messages=messages, max_tokens=4, response_format={"type": "xml"}
    )
    raise AssertionError("response_format xml accepted")
except openai.BadRequestError as e:
    assert "response_format" in str(e), e
d = client.chat.completions.create(
    model=model, messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    max_tokens=4, temperature=0,
)
assert d.choices[0].message.content is not None, d

print([m.id for m in client.models.list().data])
print("ok")
