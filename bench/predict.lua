-- wrk script of `make bench`: POSTs iris predictions in the body format a
-- target expects, rotating many distinct users' bearer tokens, and prints one
-- JSON line of results from done().
--
-- Configured by environment (bench/run.py sets it):
--   BENCH_FORMAT   seed | v1 | v2       body format (seed alias, /v1 instances, v2 tensors)
--   BENCH_ROWS     rows per request (default 1)
--   BENCH_TOKENS   file with one bearer token per line (optional)
--   BENCH_V2_INPUT v2 input tensor name (default "input-0")
--   BENCH_SEED     random seed (default 1)
--   BENCH_BODIES   file of prepared request bodies, one a line (optional: for models
--                  other than iris; BENCH_FORMAT and BENCH_ROWS then do not apply)
-- Every request is built once in init(); request() only hands them out, so
-- the load generator spends its CPU on the connections, not on Lua.

local threads = {}
local counter = 0

function setup(thread)
    counter = counter + 1
    thread:set("thread_id", counter)
    table.insert(threads, thread)
end

-- Feature bounds of the iris data set (cm), one decimal like the data set.
local FEATURES = {
    { "sepal_length", 4.3, 7.9 },
    { "sepal_width", 2.0, 4.4 },
    { "petal_length", 1.0, 6.9 },
    { "petal_width", 0.1, 2.5 },
}

local function sample()
    local row = {}
    for i, f in ipairs(FEATURES) do
        local v = f[2] + math.random() * (f[3] - f[2])
        row[i] = string.format("%.1f", v)
    end
    return row
end

local function seed_body()
    local r = sample()
    return string.format(
        '{"sepal_length":%s,"sepal_width":%s,"petal_length":%s,"petal_width":%s}',
        r[1], r[2], r[3], r[4])
end

local function v1_body(rows)
    local items = {}
    for i = 1, rows do
        local r = sample()
        items[i] = string.format(
            '{"sepal_length":%s,"sepal_width":%s,"petal_length":%s,"petal_width":%s}',
            r[1], r[2], r[3], r[4])
    end
    return '{"instances":[' .. table.concat(items, ",") .. "]}"
end

local function v2_body(rows, name)
    local data = {}
    for i = 1, rows do
        local r = sample()
        data[i] = table.concat(r, ",")
    end
    return string.format(
        '{"inputs":[{"name":"%s","shape":[%d,4],"datatype":"FP64","data":[%s]}]}',
        name, rows, table.concat(data, ","))
end

local function read_lines(path)
    local lines = {}
    if path == nil or path == "" then
        return lines
    end
    local f = assert(io.open(path, "r"))
    for line in f:lines() do
        if line ~= "" then
            table.insert(lines, line)
        end
    end
    f:close()
    return lines
end

local requests_ = {}
local next_index = 1
non2xx = 0
responses = 0

function init(args)
    local format = os.getenv("BENCH_FORMAT") or "seed"
    local rows = tonumber(os.getenv("BENCH_ROWS") or "1")
    local v2_input = os.getenv("BENCH_V2_INPUT") or "input-0"
    local tokens = read_lines(os.getenv("BENCH_TOKENS"))
    math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1") * 1000 + thread_id)

    local bodies = read_lines(os.getenv("BENCH_BODIES"))
    local n_bodies = #bodies
    if n_bodies == 0 then
        n_bodies = rows > 1 and 16 or 256
    end
    for i = #bodies + 1, n_bodies do
        if format == "seed" then
            bodies[i] = seed_body()
        elseif format == "v1" then
            bodies[i] = v1_body(rows)
        elseif format == "v2" then
            bodies[i] = v2_body(rows, v2_input)
        else
            error("BENCH_FORMAT must be seed, v1 or v2")
        end
    end

    -- Threads start at different users, then every request moves to the next
    -- user, so consecutive requests on a connection carry different tokens.
    local n = math.max(#tokens, n_bodies)
    local offset = (thread_id - 1) * math.floor(math.max(#tokens, 1) / 2)
    for i = 1, n do
        local headers = { ["Content-Type"] = "application/json" }
        if #tokens > 0 then
            headers["Authorization"] = "Bearer " .. tokens[((offset + i - 1) % #tokens) + 1]
        end
        requests_[i] = wrk.format("POST", nil, headers, bodies[((i - 1) % n_bodies) + 1])
    end
end

function request()
    local r = requests_[next_index]
    next_index = next_index + 1
    if next_index > #requests_ then
        next_index = 1
    end
    return r
end

function response(status, headers, body)
    responses = responses + 1
    if status < 200 or status > 299 then
        non2xx = non2xx + 1
    end
end

function done(summary, latency, requests)
    local bad, seen = 0, 0
    for _, t in ipairs(threads) do
        bad = bad + t:get("non2xx")
        seen = seen + t:get("responses")
    end
    local pct = {}
    for _, p in ipairs({ 50, 90, 95, 99, 99.9 }) do
        table.insert(pct, string.format('"p%s":%.3f', tostring(p):gsub("%.", "_"),
            latency:percentile(p) / 1000))
    end
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_s":%.3f,"bytes":%d,"responses":%d,"non2xx":%d,'
        .. '"latency_ms":{%s,"mean":%.3f,"stdev":%.3f,"max":%.3f},'
        .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
        summary.requests, summary.duration / 1e6, summary.bytes, seen, bad,
        table.concat(pct, ","), latency.mean / 1000, latency.stdev / 1000, latency.max / 1000,
        e.connect, e.read, e.write, e.status, e.timeout))
end
