-- wrk script of scripts/bench-api.sh: POSTs new sites with unique domains.
-- BENCH_TOKEN: bearer token (empty for the bare baseline); BENCH_RUN: a tag unique to
-- this run, so that no two requests of any run share a domain.
local token = os.getenv("BENCH_TOKEN") or ""
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  counter = 0
  headers = { ["Content-Type"] = "application/json" }
  if token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"name":"Bench %d","domain":"s%d-%d.%s.bench.example","plan":"starter"}',
    counter, tid, counter, run)
  return wrk.format("POST", nil, headers, body)
end
