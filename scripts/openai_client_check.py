#!/usr/bin/env python3
"""The official `openai` Python client against blockwise-server: a completion and a chat
completion, each plain and streamed, plus one bad request. Prints one JSON object with the
answers' texts and what the client raised, for server/tests/openai_client.rs to compare with
the library's greedy decoding.

    .venv/bin/python scripts/openai_client_check.py BASE_URL MODEL PROMPT QUESTION MAX_TOKENS
"""

import json
import sys

import openai

base, model, prompt, question, max_tokens = sys.argv[1:6]
max_tokens = int(max_tokens)
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
out = {"models": [m.id for m in client.models.list().data]}

c = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
out["completion"] = c.choices[0].text
out["completion_usage"] = c.usage.completion_tokens
out["completion_stream"] = "".join(
    chunk.choices[0].text
    for chunk in client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True)
    if chunk.choices)

messages = [{"role": "user", "content": question}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
out["chat"] = r.choices[0].message.content
out["chat_finish"] = r.choices[0].finish_reason
out["chat_stream"] = "".join(
    chunk.choices[0].delta.content or ""
    for chunk in client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, stream=True)
    if chunk.choices)

try:
    client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, top_p=1.5)
    out["bad_request"] = None
except openai.BadRequestError as e:
    out["bad_request"] = {"status": e.status_code, "param": e.body.get("param")}
try:
    client.completions.create(model="no-such-model", prompt=prompt, max_tokens=2)
    out["not_found"] = None
except openai.NotFoundError as e:
    out["not_found"] = {"status": e.status_code}
print(json.dumps(out))
