"""Self-distillation: local batched generation with a tiny model, resuming after a stop or a crash, input formats,
errors, and the OpenAI-compatible backend against a tiny HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from data import distill as dist
from data.distill import DistillError, distill, read_records
from tests.tiny import tiny_model, tiny_tokenizer

FAST = dict(
    batch_size=3, max_new_tokens=5, window=2, progress=False
)  # small batches: several windows and rounds


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def prompts_file(tmp_path):
    rows = [
        {
            "id": f"q{i}",
            "split": "train" if i % 4 else "eval",
            "category": "math",
            "turns": [f"What is {i} plus {i}?"],
        }
        for i in range(10)
    ]
    rows[2]["turns"].append("Now double it.")
    rows[7]["turns"] += ["Explain why.", "Thanks, and once more?"]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


@pytest.fixture(scope="module")
def model():
    return tiny_model(), tiny_tokenizer()


def read_output(path):
    text = open(path, encoding="utf-8").read()
    assert text == "" or text.endswith("\n"), "partial last line"
    return [json.loads(line) for line in text.splitlines()]


def check_complete(path, records):
    out = read_output(path)
    ids = [r["id"] for r in out]
    assert sorted(ids) == sorted(r["id"] for r in records), "every id exactly once"
    by_id = {r["id"]: r for r in records}
    for record in out:
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * len(by_id[record["id"]]["users"])
        assert [m["content"] for m in messages[::2]] == by_id[record["id"]]["users"]
    return out


def test_local_backend_one_record_per_input(prompts_file, tmp_path, model):
    records = read_records(prompts_file)
    out = tmp_path / "out.jsonl"
    stats = distill(records, str(out), model=model[0], tokenizer=model[1], model_name="tiny", **FAST)
    assert stats["written"] == 10 and stats["already_done"] == 0 and stats["generated_tokens"] > 0
    rows = check_complete(out, records)
    assert {r["id"]: r["split"] for r in rows}["q0"] == "eval"
    assert rows[0]["category"] == "math"
    assert rows[0]["provenance"] == {
        "model": "tiny",
        "revision": None,
        "template": dist.template_hash(model[1]),
        "temperature": 0.0,
        "max_new_tokens": 5,
        "backend": "local",
        "dtype": "float32",
    }
    again = distill(records, str(out), model=model[0], tokenizer=model[1], model_name="tiny", **FAST)
    assert again["written"] == 0 and again["already_done"] == 10


def test_sampling_with_temperature(prompts_file, tmp_path, model):
    records = read_records(prompts_file, limit=3)
    out = tmp_path / "out.jsonl"
    distill(records, str(out), model=model[0], tokenizer=model[1], **dict(FAST, temperature=0.8))
    assert [r["provenance"]["temperature"] for r in check_complete(out, records)] == [0.8] * 3


def test_batched_left_padding_matches_one_by_one(model):
    gen = dist.LocalGenerator(*model, max_new_tokens=6, temperature=0.0)
    prompts = [
        gen.encode([{"role": "user", "content": text}])
        for text in ("Hi", "The quick brown fox jumps over it")
    ]
    assert len(prompts[0]) != len(prompts[1])
    together = gen.generate(prompts)
    alone = [gen.generate([p])[0] for p in prompts]
    assert together == alone


def test_resume_after_stop_and_half_written_line(prompts_file, tmp_path, model):
    records = read_records(prompts_file)
    out = tmp_path / "out.jsonl"
    first = distill(records, str(out), model=model[0], tokenizer=model[1], max_records=4, **FAST)
    assert first["written"] == 4 and len(read_output(out)) == 4
    with open(out, "ab") as f:  # a write killed halfway
        f.write(b'{"id": "q9", "split": "train", "messages": [{"role": "us')
    second = distill(records, str(out), model=model[0], tokenizer=model[1], **FAST)
    assert second["already_done"] == 4 and second["written"] == 6
    check_complete(out, records)


class CrashingModel:
    """Delegates to a real model, but its generate raises after `after` calls (a killed run)."""

    def __init__(self, model, after):
        self.model, self.left = model, after

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, **kwargs):
        if self.left == 0:
            raise RuntimeError("killed")
        self.left -= 1
        return self.model.generate(**kwargs)


def test_resume_after_crash(prompts_file, tmp_path, model):
    records = read_records(prompts_file)
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        distill(records, str(out), model=CrashingModel(model[0], after=3), tokenizer=model[1], **FAST)
    partial = read_output(out)
    assert 0 < len(partial) < 10
    distill(records, str(out), model=model[0], tokenizer=model[1], **FAST)
    check_complete(out, records)


def test_resume_refuses_other_settings(prompts_file, tmp_path, model):
    records = read_records(prompts_file)
    out = str(tmp_path / "out.jsonl")
    distill(records, out, model=model[0], tokenizer=model[1], max_records=2, **FAST)
    with pytest.raises(DistillError, match="max_new_tokens"):
        distill(records, out, model=model[0], tokenizer=model[1], **dict(FAST, max_new_tokens=7))
    rows = read_output(out)
    for row in rows:  # a file written before provenance had a dtype field still resumes
        del row["provenance"]["dtype"]
    write_jsonl(tmp_path / "out.jsonl", rows)
    assert distill(records, out, model=model[0], tokenizer=model[1], **FAST)["already_done"] == 2


def test_messages_input_drops_old_answers(tmp_path, model):
    rows = [
        {
            "id": "c1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "OLD ANSWER"},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "OLD ANSWER"},
            ],
        },
        {"id": "c2", "messages": [{"role": "assistant", "content": "no user turn"}]},
    ]
    records = read_records(write_jsonl(tmp_path / "conv.jsonl", rows))
    assert [r["id"] for r in records] == ["c1"] and records[0]["system"] == "Be brief."
    out = tmp_path / "out.jsonl"
    distill(records, str(out), model=model[0], tokenizer=model[1], **FAST)
    (row,) = read_output(out)
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert "OLD ANSWER" not in json.dumps(row) and row["split"] == "train" and row["category"] is None


def test_sharegpt_input_goes_through_the_conversation_reader(tmp_path):
    turn = lambda who, text: {"from": who, "value": text}  # noqa: E731
    rows = [
        {
            "id": "s1",
            "conversations": [
                turn("human", "Hi"),
                turn("gpt", "Hello"),
                turn("human", "Bye"),
                turn("gpt", "!"),
            ],
        },
        {"id": "s2", "conversations": [turn("robot", "??"), turn("gpt", "x")]},
    ]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    with pytest.raises(DistillError, match="cannot read"):
        read_records(path)
    (record,) = read_records(path, skip_bad=True)
    assert record["id"] == "s1" and record["users"] == ["Hi", "Bye"]


def test_split_and_limit(prompts_file):
    assert [r["id"] for r in read_records(prompts_file, split="eval")] == ["q0", "q4", "q8"]
    assert [r["id"] for r in read_records(prompts_file, limit=2)] == ["q0", "q1"]


def test_clear_errors(tmp_path, prompts_file, model):
    with pytest.raises(DistillError, match="not found"):
        read_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DistillError, match="no conversations"):
        read_records(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DistillError, match="no conversations"):
        read_records(prompts_file, split="calib")
    with pytest.raises(DistillError, match="duplicate id"):
        read_records(write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "turns": ["x"]}] * 2))
    # a string is not a list of turns (it was read as one user turn per character), nor is a number
    for bad in ("Hello", 5, ["ok", 3], [" "]):
        path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "b", "turns": bad}])
        with pytest.raises(DistillError, match="record b: 'turns' must be a non-empty list of strings"):
            read_records(path)
    with pytest.raises(DistillError, match="record m: 'messages' must be a list"):
        read_records(write_jsonl(tmp_path / "badm.jsonl", [{"id": "m", "messages": "Hi"}]))
    records = read_records(prompts_file)
    with pytest.raises(DistillError, match="unknown backend"):
        distill(records, str(tmp_path / "o.jsonl"), backend="vllm", model=model[0], tokenizer=model[1])
    with pytest.raises(DistillError, match="base-url"):
        distill(records, str(tmp_path / "o.jsonl"), backend="openai")
    with pytest.raises(SystemExit) as exit_info:
        dist.main(["--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o.jsonl")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        dist.main(["--input", prompts_file, "--output", str(tmp_path / "o.jsonl"), "--backend", "nope"])


# ---------------------------------------------------------------- the openai backend


class ChatHandler(BaseHTTPRequestHandler):
    """/v1/chat/completions answering "echo <n>: <last user message>"; every request is kept on the server."""

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((body, self.headers.get("Authorization")))
        last = body["messages"][-1]["content"]
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "system_fingerprint": "test",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"echo {len(body['messages'])}: {last}"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_openai_backend(server, prompts_file, tmp_path):
    records = read_records(prompts_file)
    out = tmp_path / "out.jsonl"
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    stats = distill(records, str(out), backend="openai", base_url=url, model_name="my-model", **FAST)
    assert stats["written"] == 10 and stats["generated_tokens"] == 4 * 13  # 13 user turns in all
    rows = {r["id"]: r for r in check_complete(out, records)}
    q7 = [m["content"] for m in rows["q7"]["messages"]]
    assert q7[1] == "echo 1: What is 7 plus 7?"
    assert (
        q7[3] == "echo 3: Explain why." and q7[5] == "echo 5: Thanks, and once more?"
    )  # own answers fed back
    provenance = rows["q0"]["provenance"]
    assert (
        provenance["backend"] == "openai"
        and provenance["model"] == "my-model"
        and provenance["dtype"] is None
    )
    body, auth = server.requests[0]
    assert body["model"] == "my-model" and body["max_tokens"] == 5 and body["temperature"] == 0.0
    assert auth == "Bearer EMPTY"  # never the local Hugging Face token


def test_cli_with_openai_backend(server, prompts_file, tmp_path):
    out = tmp_path / "out.jsonl"
    url = f"http://127.0.0.1:{server.server_address[1]}"
    args = ["--input", prompts_file, "--output", str(out), "--backend", "openai", "--base-url", url]
    stats = dist.main(args + ["--split", "train", "--limit", "3", "--max-new-tokens", "9", "--no-progress"])
    assert stats["written"] == 3
    assert sorted(r["id"] for r in read_output(out)) == [
        "q1",
        "q2",
        "q3",
    ]  # q2 has two turns: it finishes last
    assert server.requests[0][0]["max_tokens"] == 9
