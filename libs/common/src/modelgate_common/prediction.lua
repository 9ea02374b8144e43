-- A prediction's admission in one call (sliding_window.lua is prepended).
-- KEYS: the request window (previous, current), the rows window (previous, current)
-- and, when the token's revocation is looked up here, its token id's and its
-- subject's revocation keys. ARGV: request limit, request period (ms), rows limit,
-- rows period (ms), rows (0: charge the request alone), the token's iat.
-- Returns {-1} for a revoked token (nothing charged), else the request window's reply
-- followed, when the request was allowed and rows > 0, by the rows window's. A refused
-- request charges no rows; a refused batch still spends its request.
if #KEYS == 6 then
    if redis.call('exists', KEYS[5]) == 1 then
        return {-1}
    end
    local revoked_at = redis.call('get', KEYS[6])
    if revoked_at and tonumber(ARGV[6]) <= tonumber(revoked_at) then
        return {-1}
    end
end
local request = sliding(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), 1)
local rows = tonumber(ARGV[5])
if request[1] == 0 or rows == 0 then
    return request
end
local quota = sliding(KEYS[3], KEYS[4], tonumber(ARGV[3]), tonumber(ARGV[4]), rows)
for _, value in ipairs(quota) do
    table.insert(request, value)
end
return request
