"""The one failure policy: what each failure means for the deployment and for the client."""

import asyncio
import json

from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException

from deployments.failures import (
    TierUnavailable,
    api_error,
    engine_error,
    error_response,
    failure,
    no_tier_error,
)
from deployments.protocol import APIError, BadRequest, Overloaded, ServiceUnavailable


def test_one_failure_policy_says_what_each_failure_means_for_the_deployment_and_the_client():
    assert failure(BackPressureError(num_queued_requests=1, max_queued_requests=1)) == "busy"
    assert failure(Overloaded("full")) == "busy"
    assert failure(asyncio.TimeoutError()) == "slow"
    assert failure(DeploymentUnavailableError("fast")) == "down"
    assert failure(ServiceUnavailable("engine is dead")) == "down"
    assert failure(BadRequest("bad")) is None and failure(ValueError("bug")) is None
    # Ray wraps what a replica raised: the policy judges the cause.
    wrapped = RayTaskError("generate", "traceback", ServiceUnavailable("engine is dead"))
    assert failure(wrapped) == "down" and isinstance(api_error(wrapped), ServiceUnavailable)

    busy = api_error(BackPressureError(num_queued_requests=1, max_queued_requests=1))
    down = api_error(DeploymentUnavailableError("fast"))
    assert (busy.status, busy.retry_after_s) == (429, Overloaded.retry_after_s) == (429, 1)
    assert (down.status, down.retry_after_s) == (503, ServiceUnavailable.retry_after_s) == (503, 5)
    bug = api_error(ValueError("bug"))
    assert type(bug) is APIError and bug.status == 500 and "internal" in bug.message
    given = BadRequest("bad", param="n")
    assert api_error(given) is given




def test_every_failure_is_answered_with_the_openai_body_and_retry_after_where_it_helps():
    busy = error_response(BackPressureError(num_queued_requests=1, max_queued_requests=1))
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert json.loads(busy.body)["error"]["type"] == "rate_limit_error"
    bad = error_response(BadRequest("n: too big", param="n"))
    assert bad.status_code == 400 and "retry-after" not in bad.headers
    assert json.loads(bad.body) == {"error": {"message": "n: too big", "type": "invalid_request_error",
                                              "param": "n", "code": None}}
    missing = error_response(HTTPException(404, "Not Found"), "GET", "/v2/nothing")
    assert missing.status_code == 404
    assert json.loads(missing.body)["error"]["message"] == "GET /v2/nothing: Not Found"
    assert error_response(RuntimeError("bug")).status_code == 500


def test_engine_failures_map_to_the_request_or_the_tier():
    from vllm.v1.engine.exceptions import EngineDeadError

    assert isinstance(engine_error(EngineDeadError(), "fast"), ServiceUnavailable)
    assert isinstance(engine_error(ValueError("n must be 1 when using greedy sampling"), "f"),
                      BadRequest)
    other = KeyError("x")
    assert engine_error(other, "fast") is other


def test_no_tier_is_busy_only_when_one_was_full():
    assert no_tier_error(True).status == 429
    down = no_tier_error(False)
    assert down.status == 503 and down.code == "llm_unavailable"
    assert TierUnavailable("fast", busy=True).busy
