-- Reads a history window: KEYS = {meta, list}; ARGV = {since, before, limit}
-- (since/before empty when absent). The list holds seqs top-len+1..top.
-- The window is the one `room::history_window` defines: with since, the
-- first `limit` after it; with before, the newest `limit` before it; else
-- the newest `limit`. Returns {epoch, top, msg...}, or {} for no room.
local m = redis.call('HMGET', KEYS[1], 'epoch', 'top')
if not m[1] then return {} end
local top = tonumber(m[2])
local lowest = top - redis.call('LLEN', KEYS[2]) + 1
local limit = tonumber(ARGV[3])
local s = lowest
if ARGV[1] ~= '' then s = math.max(tonumber(ARGV[1]) + 1, lowest) end
local e = top + 1
if ARGV[2] ~= '' then e = math.min(tonumber(ARGV[2]), top + 1) end
if e < s then e = s end
if ARGV[1] ~= '' then e = math.min(e, s + limit) else s = math.max(e - limit, s) end
local r = {m[1], m[2]}
if e > s then
  for _, v in ipairs(redis.call('LRANGE', KEYS[2], s - lowest, e - lowest - 1)) do r[#r + 1] = v end
end
return r
