-- wrk script for the bench scripts (bench/harness.py runs it): send one request again
-- and again, rotating bearer tokens and grant tokens read from files, counting status
-- codes, and printing a JSON summary.
--
-- Environment (set by bench/harness.py):
--   BENCH_METHOD        POST (default) or GET
--   BENCH_BODY_FILE     the request body (JSON), sent as application/json; empty: none
--   BENCH_AUTH          a fixed Authorization bearer value (a secret key), or
--   BENCH_AUTH_FILE     bearer values, one a line, used in turn (session JWTs)
--   BENCH_GRANTS_FILE   grant tokens, one a line, sent as x-wattfare-grant (optional)
--   BENCH_USES          how many calls each grant token may take (default 100)
--   BENCH_WIDTH         how many grants a thread keeps in use side by side (default 16):
--                       at least the connections per thread, so calls in flight at the
--                       same moment go to different grants, as different users' would
--
-- Each wrk thread takes every n-th line of each file (n = threads), so no two threads
-- share a grant and no grant is asked for more than BENCH_USES calls: a run that
-- outlasts its grants shows up as 402s in the summary, never silently.

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local function read_lines(path, index, count)
  local lines = {}
  if not path or path == "" then
    return lines
  end
  local n = 0
  for line in io.lines(path) do
    if line ~= "" then
      if n % count == index then
        table.insert(lines, line)
      end
      n = n + 1
    end
  end
  return lines
end

local method, body, auth, grants, uses, width
local sent = 0
statuses = {}

function init(args)
  local count = tonumber(os.getenv("BENCH_THREADS") or "1")
  method = os.getenv("BENCH_METHOD") or "POST"
  local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
  body = f:read("*a")
  f:close()
  if body == "" then
    body = nil
  end
  auth = read_lines(os.getenv("BENCH_AUTH_FILE"), thread_index, count)
  if #auth == 0 then
    auth = { os.getenv("BENCH_AUTH") }
  end
  grants = read_lines(os.getenv("BENCH_GRANTS_FILE"), thread_index, count)
  uses = tonumber(os.getenv("BENCH_USES") or "100")
  width = math.min(tonumber(os.getenv("BENCH_WIDTH") or "16"), math.max(#grants, 1))
end

function request()
  local headers = {}
  if body then
    headers["Content-Type"] = "application/json"
  end
  if auth[1] then
    headers["Authorization"] = "Bearer " .. auth[(sent % #auth) + 1]
  end
  if #grants > 0 then
    -- Calls k = 0, 1, 2 … go round `width` grants at a time; after `uses` rounds the
    -- next `width` grants take over. Past the last grant, wrap (and get 402s).
    local group = math.floor(sent / (uses * width))
    local index = (group * width + sent % width) % #grants
    headers["x-wattfare-grant"] = grants[index + 1]
  end
  sent = sent + 1
  return wrk.format(method, nil, headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "mean_us": %.1f, "max_us": %d, "errors": {"connect": %d, '
      .. '"read": %d, "write": %d, "status": %d, "timeout": %d}, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout, table.concat(parts, ", ")
  ))
end
