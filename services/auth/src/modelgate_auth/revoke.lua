-- Writes revocations. KEYS: the revocation keys. ARGV[1]: the prefix of subject
-- cut-off keys, ARGV[2]: the index of live revocations, then (value, expires_at)
-- for each key, in the order of KEYS.
--
-- A subject cut-off holds a time: tokens issued at or before it are revoked. It only
-- ever moves forward: an older cut-off that arrives after a newer one (two workers
-- pushing at once, the periodic re-push of the database rows) never replaces it.
-- Every revocation is also a member "<key> <value>" of the index, scored by its
-- expiry, so that each service worker can copy the live set in one ZRANGE (see
-- modelgate_common's RevocationMirror).
local subject_prefix = ARGV[1]
local index = ARGV[2]
for i, key in ipairs(KEYS) do
    local value = ARGV[1 + 2 * i]
    local expires_at = tonumber(ARGV[2 + 2 * i])
    local write = true
    if string.sub(key, 1, #subject_prefix) == subject_prefix then
        local current = tonumber(redis.call('get', key))
        if current and current >= tonumber(value) then
            write = false
        end
    end
    if write then
        redis.call('set', key, value, 'EXAT', expires_at)
        redis.call('zadd', index, 'GT', expires_at, key .. ' ' .. value)
    end
end
redis.call('zremrangebyscore', index, '-inf', '(' .. redis.call('time')[1])
return #KEYS
