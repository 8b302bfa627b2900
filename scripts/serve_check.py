#!/usr/bin/env python3
"""The official openai client against `smolbit serve` (run by scripts/serve-check.sh).

Arguments: base URL, model id, prompt, and `smolbit generate --chat --max-new-tokens 24 --json`'s
output for that prompt, whose text the greedy answers must equal.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base, model, prompt, generated = sys.argv[1:5]
    want = json.loads(generated)["text"]
    client = OpenAI(base_url=base, api_key="check-key", max_retries=0, timeout=120)

    ids = [m.id for m in client.models.list().data]
    assert ids == [model], ids

    messages = [{"role": "user", "content": prompt}]
    r = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=24
    )
    got = r.choices[0].message.content
    assert got == want, (got, want)
    assert r.choices[0].finish_reason == "length", r.choices[0].finish_reason
    assert r.usage.completion_tokens == 24, r.usage

    parts, finish = [], []
    stream = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=24, stream=True
    )
    for chunk in stream:
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish.append(c.finish_reason)
    assert "".join(parts) == want, ("".join(parts), want)
    assert finish == ["length"], finish

    c = client.completions.create(
        model=model, prompt="def add(a, b):", temperature=0, max_tokens=8
    )
    assert c.choices[0].text, c
    assert c.usage.completion_tokens <= 8, c.usage

    bad = OpenAI(base_url=base, api_key="wrong", max_retries=0)
    try:
        bad.models.list()
    except openai.AuthenticationError:
        pass
    else:
        raise AssertionError("a wrong key was accepted")
    print(f"openai {openai.__version__}: chat, streamed chat, completion and models agree")


if __name__ == "__main__":
    main()
