-- The sliding window counter, modelgate's own: two counters per identity, the current
-- window and the previous one. The previous window's count weighs in proportion to the
-- time it has left, so the budget frees up smoothly instead of all at once at a window
-- edge, in O(1) memory whatever the limit.
--
-- A window is created with a life of two periods; once it has lived one period it
-- becomes the previous window (keeping its remaining life, which is how much it still
-- weighs) and a new current window starts. The shift runs first in every call, so a
-- refused request reads the same window a later request will.
--
-- Returns {allowed (0/1), previous count, previous pttl, current count, current pttl}.
local function sliding(previous_key, current_key, limit, period_ms, amount)
    local current_ttl = tonumber(redis.call('pttl', current_key))
    if current_ttl > 0 and current_ttl < period_ms then
        redis.call('rename', current_key, previous_key)
        redis.call('set', current_key, 0, 'PX', current_ttl + period_ms)
    end

    local previous_count = tonumber(redis.call('get', previous_key)) or 0
    local previous_ttl = tonumber(redis.call('pttl', previous_key)) or 0
    local current_count = tonumber(redis.call('get', current_key)) or 0
    current_ttl = tonumber(redis.call('pttl', current_key)) or 0
    if previous_ttl <= 0 then
        previous_ttl = 0
    end
    if current_ttl <= 0 then
        current_ttl = 0
    end
    local weighted = math.floor(previous_count * previous_ttl / period_ms) + current_count

    if amount > limit or weighted + amount > limit then
        return {0, previous_count, previous_ttl, current_count, current_ttl}
    end
    if amount == 0 then
        return {1, previous_count, previous_ttl, current_count, current_ttl}
    end
    if redis.call('exists', current_key) == 1 then
        current_count = redis.call('incrby', current_key, amount)
        current_ttl = tonumber(redis.call('pttl', current_key))
    else
        redis.call('set', current_key, amount, 'PX', period_ms * 2)
        current_count = amount
        current_ttl = period_ms * 2
    end
    return {1, previous_count, previous_ttl, current_count, current_ttl}
end
