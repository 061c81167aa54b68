/*
 * Kore's side of ./dev bench: a module answering every request with the
 * same JSON body as bench/ref_server.c (and keeld's /health), so the peer
 * in the table does what the ceiling does.  Built by bench/run with
 * `kodev build`; run by bench/run with a generated configuration (one
 * worker per server CPU, plain HTTP, no access log).
 */
#include <kore/kore.h>
#include <kore/http.h>

int page(struct http_request *);

static const char body[] =
    "{\"status\":\"ok\",\"database\":\"up\",\"plugins\":{\"example\":\"loaded\",\"creator\":\"loaded\"}}";

int page(struct http_request *req)
{
    http_response_header(req, "content-type", "application/json");
    http_response(req, 200, body, sizeof(body) - 1);
    return (KORE_RESULT_OK);
}
