"""HTTP pieces shared by the model server and the router, in one place so both answer alike: bearer auth and
API key reading (`auth`), request ids (`request_id`), OpenAI's error shape (`errors`) and health probes
(`health`)."""

from serving.http.auth import AUTH_HEADERS, KEY_ENV, KEY_FILE_ENV, bearer_token, is_authorized, read_api_key
from serving.http.errors import client_caused, error_body, error_type
from serving.http.health import Health, HealthState, health_response, ready_response
from serving.http.request_id import REQUEST_ID_HEADER, new_request_id, request_id_from, valid_request_id

__all__ = ["AUTH_HEADERS", "KEY_ENV", "KEY_FILE_ENV", "REQUEST_ID_HEADER", "Health", "HealthState", "bearer_token",
           "client_caused", "error_body", "error_type", "health_response", "is_authorized", "new_request_id",
           "read_api_key", "ready_response", "request_id_from", "valid_request_id"]
