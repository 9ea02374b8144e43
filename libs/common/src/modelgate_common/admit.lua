-- One sliding-window check (sliding_window.lua is prepended).
-- KEYS: previous, current window. ARGV: limit, period (ms), cost.
return sliding(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
