"""OpenAI and Anthropic agents against the fake servers: real SDKs, real HTTP on 127.0.0.1."""

import time

import pytest

from autoresearch.agents.base import AgentContext, AgentError
from autoresearch.agents.llm import AnthropicAgent, OpenAIAgent
from autoresearch.config import AgentSettings, Price, TargetSpec
from autoresearch.errors import AgentConfigError
from autoresearch.testing import FakeAnthropicServer, FakeOpenAIServer

TRAIN = "LEARNING_RATE = 0.01\nBATCH_SIZE = 32\n"
GOOD = ("Description: double the learning rate\n\ntrain.py\n<<<<<<< SEARCH\nLEARNING_RATE = 0.01\n"
        "=======\nLEARNING_RATE = 0.02\n>>>>>>> REPLACE\n")
MISS = GOOD.replace("SEARCH\nLEARNING_RATE = 0.01", "SEARCH\nLEARNING_RATE = 0.1")
LOCKED = "Description: cheat\n\nprepare.py\n<<<<<<< SEARCH\nX = 1\n=======\nX = 0\n>>>>>>> REPLACE\n"

BACKENDS = [(FakeOpenAIServer, OpenAIAgent), (FakeAnthropicServer, AnthropicAgent)]
IDS = ["openai", "anthropic"]


def settings(**kw) -> AgentSettings:
    base = dict(timeout=10, max_retries=2, prices={"fake-model": Price(input=3.0, output=15.0)})
    base.update(kw)
    return AgentSettings(**base)


def context(tmp_path=None) -> AgentContext:
    spec = TargetSpec(editable=["train.py"], run="python train.py", metric="val_loss")
    return AgentContext(program="Lower the loss.", files={"train.py": TRAIN},
                        history=[], best=None, spec=spec, base_commit="0" * 40, experiment_seq=1,
                        editable=lambda p: p == "train.py", log_dir=tmp_path)


def agent(server, agent_cls, **kw):
    return agent_cls("fake-model", settings(**kw), base_url=server.base_url, api_key="test-key")


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_good_answer_becomes_a_proposal_with_usage_and_cost(server_cls, agent_cls, tmp_path):
    step = {"reply": GOOD, "input_tokens": 1000, "output_tokens": 200}
    with server_cls([step]) as server:
        p = agent(server, agent_cls).propose(context(tmp_path))
    assert p.description == "double the learning rate"
    assert p.files == {"train.py": "LEARNING_RATE = 0.02\nBATCH_SIZE = 32\n"}
    assert (p.usage.input_tokens, p.usage.output_tokens) == (1000, 200)
    assert p.usage.cost_usd == pytest.approx((1000 * 3 + 200 * 15) / 1e6)
    sent = server.requests[0]["body"]
    assert sent["model"] == "fake-model"
    text = "\n".join(str(m["content"]) for m in sent["messages"]) + str(sent.get("system", ""))
    assert "Lower the loss." in text and TRAIN in text and "<<<<<<< SEARCH" in text
    assert p.agent_log == str(tmp_path / "proposal-0001.md")
    assert "LEARNING_RATE = 0.02" in (tmp_path / "proposal-0001.md").read_text()


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_rate_limit_is_retried_then_succeeds(server_cls, agent_cls):
    with server_cls([{"status": 429, "retry_after": 0}, {"status": 429, "retry_after": 0}, GOOD]) as server:
        p = agent(server, agent_cls).propose(context())
    assert p.files["train.py"].startswith("LEARNING_RATE = 0.02")
    assert len(server.requests) == 3


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_server_error_is_retried_then_becomes_agent_error(server_cls, agent_cls):
    with server_cls([{"status": 500, "retry_after": 0}] * 3) as server:
        with pytest.raises(AgentError, match=r"HTTP 500 \(after 2 retries\)"):
            agent(server, agent_cls).propose(context())
    assert len(server.requests) == 3


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_timeout_becomes_agent_error(server_cls, agent_cls):
    with server_cls([{"delay": 8, "reply": GOOD}]) as server:
        start = time.monotonic()
        with pytest.raises(AgentError, match="no answer within 1 s"):
            agent(server, agent_cls, timeout=1, max_retries=0).propose(context())
        assert time.monotonic() - start < 6     # gave up long before the late answer


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_timeout_then_success_on_retry(server_cls, agent_cls):
    with server_cls([{"delay": 2, "reply": GOOD}, GOOD]) as server:
        p = agent(server, agent_cls, timeout=1, max_retries=1).propose(context())
    assert "0.02" in p.files["train.py"]


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_garbage_answer_is_agent_error_with_its_usage(server_cls, agent_cls, tmp_path):
    with server_cls([{"reply": "I would tune the learning rate.", "input_tokens": 50, "output_tokens": 9}]) as s:
        with pytest.raises(AgentError, match="no SEARCH/REPLACE block") as info:
            agent(s, agent_cls).propose(context(tmp_path))
    assert info.value.usage.input_tokens == 50 and info.value.usage.cost_usd > 0
    assert "tune the learning rate" in open(info.value.agent_log).read()


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_non_matching_block_gets_one_retry_with_the_closest_lines(server_cls, agent_cls):
    with server_cls([MISS, GOOD]) as server:
        p = agent(server, agent_cls).propose(context())
    assert "0.02" in p.files["train.py"]
    retry = server.requests[1]["body"]["messages"]
    assert retry[-2]["role"] == "assistant" and "LEARNING_RATE = 0.1" in str(retry[-2]["content"])
    assert "Did you mean these lines from train.py?\n```\nLEARNING_RATE = 0.01\n```" in retry[-1]["content"]


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_second_non_matching_answer_is_agent_error(server_cls, agent_cls):
    with server_cls([MISS, MISS, GOOD]) as server:
        with pytest.raises(AgentError, match="did not match.*after one retry"):
            agent(server, agent_cls).propose(context())
    assert len(server.requests) == 2       # exactly one retry turn


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_edit_to_locked_file_is_refused(server_cls, agent_cls):
    with server_cls([LOCKED, LOCKED]) as server:
        with pytest.raises(AgentError, match="not editable were refused: prepare.py"):
            agent(server, agent_cls).propose(context())
    assert "You may edit only: train.py" in server.requests[1]["body"]["messages"][-1]["content"]


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_answer_cut_at_max_tokens_says_so(server_cls, agent_cls):
    with server_cls([{"reply": "Description: x\n\ntrain.py\n<<<<<<< SEARCH\nLEARN", "finish_reason": "length"}]) as s:
        with pytest.raises(AgentError, match="cut off at max_tokens=1000"):
            agent(s, agent_cls, max_tokens=1000).propose(context())


def test_answer_cut_without_a_max_tokens_blames_the_servers_limit():
    with FakeOpenAIServer([{"reply": "Description: x\n\ntrain.py\n<<<<<<< SEARCH\nLEARN",
                            "finish_reason": "length"}]) as s:
        with pytest.raises(AgentError, match="cut off at the server's output limit"):
            agent(s, OpenAIAgent).propose(context())


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_rejected_key_is_a_config_error(server_cls, agent_cls):
    with server_cls([GOOD], api_key="the-right-key") as server:
        with pytest.raises(AgentConfigError, match="rejected the API key"):
            agent(server, agent_cls).propose(context())


def test_environment_variables_configure_the_sdk(monkeypatch):
    with FakeOpenAIServer([GOOD]) as server:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        p = OpenAIAgent("fake-model", settings()).propose(context())
    assert p.files and server.requests[0]["headers"]["authorization"] == "Bearer fake-key"


def test_missing_key_without_base_url_is_a_config_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(AgentConfigError, match="OPENAI_API_KEY"):
        OpenAIAgent("gpt-x", settings())


def test_price_falls_back_to_the_longest_prefix():
    from autoresearch.agents.llm import price_usage
    s = settings(prices={"claude": Price(input=1, output=1), "claude-sonnet": Price(input=3, output=15)})
    assert price_usage("claude-sonnet-4-5", 1_000_000, 0, s).cost_usd == pytest.approx(3.0)
    assert price_usage("unknown-model", 1_000_000, 0, s).cost_usd == 0.0


# == the connectivity check and the server's context ==========================================
@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_check_reads_the_context_and_max_tokens_fits_it(server_cls, agent_cls, tmp_path):
    with server_cls([GOOD], api_key="test-key", context_length=8192, model="fake-model") as server:
        a = agent(server, agent_cls)
        a.check()
        assert a.context_tokens == 8192 and a.max_tokens == 2048
        p = a.propose(context(tmp_path))
    assert p.description == "double the learning rate"
    get, post = server.requests
    assert get["method"] == "GET" and get["path"].split("?")[0].endswith("/models")
    assert post["body"]["max_tokens"] == 2048


def test_without_a_known_context_no_max_tokens_is_sent_to_a_local_server():
    with FakeOpenAIServer([GOOD]) as server:
        a = agent(server, OpenAIAgent)
        a.check()
        assert a.context_tokens is None
        a.propose(context())
    body = server.requests[-1]["body"]
    assert "max_tokens" not in body and "max_completion_tokens" not in body


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_max_tokens_that_fills_the_context_is_refused_at_the_check(server_cls, agent_cls):
    with server_cls([GOOD], context_length=8192, model="fake-model") as server:
        with pytest.raises(AgentConfigError, match=r"max_tokens = 8192 leaves no room for the prompt "
                                                   r"in fake-model's context of 8192 tokens"):
            agent(server, agent_cls, max_tokens=8192).check()


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_a_request_too_long_for_the_context_names_the_real_limit(server_cls, agent_cls):
    # the check is skipped, so the agent does not know the context and the server refuses
    with server_cls([GOOD], context_length=4096, model="fake-model") as server:
        with pytest.raises(AgentError, match=r"do not fit the model's context of 4096 tokens .*"
                                             r"lower \[agent\] context_chars"):
            agent(server, agent_cls, max_tokens=4000).propose(context())


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_check_with_a_wrong_key_fails_fast_with_the_servers_message(server_cls, agent_cls):
    with server_cls([GOOD], api_key="right-key") as server:
        a = agent_cls("fake-model", settings(), base_url=server.base_url, api_key="wrong-key")
        start = time.monotonic()
        with pytest.raises(AgentConfigError, match=r"the connectivity check failed: .*401.*invalid API key"):
            a.check()
    assert time.monotonic() - start < 5
    assert server.remaining == 1          # no proposal was spent


@pytest.mark.parametrize("agent_cls", [OpenAIAgent, AnthropicAgent], ids=IDS)
def test_check_against_a_dead_endpoint_fails_fast(agent_cls):
    import socket

    with socket.socket() as sock:          # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}" + ("/v1" if agent_cls is OpenAIAgent else "")
    a = agent_cls("fake-model", settings(), base_url=base, api_key="k")
    start = time.monotonic()
    with pytest.raises(AgentConfigError, match=r"the connectivity check failed: .*cannot connect"):
        a.check()
    assert time.monotonic() - start < 15


@pytest.mark.parametrize("server_cls,agent_cls", BACKENDS, ids=IDS)
def test_check_falls_back_to_a_one_token_request_without_a_model_list(server_cls, agent_cls):
    with server_cls(["OK", GOOD], models=False) as server:
        a = agent(server, agent_cls)
        a.check()
        assert a.context_tokens is None
        assert server.requests[-1]["body"]["max_tokens"] == 1
