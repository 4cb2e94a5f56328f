-- Appends messages of one room: KEYS = {meta, list};
-- ARGV = {token, epoch, first_seq, cap, ttl_ms, deadline_ms, msg...}.
-- Accepted only from the room's current owner (token), in its epoch, right
-- after the top seq, and before its deadline (Unix ms): the history list
-- and the top move together, atomically. A run the same owner already
-- stored (a round sent again) counts as stored.
-- Returns 1 (stored), 0 (the store has no such room: lost), -1 (another
-- owner claimed it: fenced), {-2, top} (epoch or seq do not follow the
-- store's top: a gap, with what the store has) or -3
-- (past its deadline: the owner has told the senders it was not stored,
-- e.g. a pipeline run only when a paused Redis resumed).
local m = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'top')
if not m[1] then return 0 end
if m[1] ~= ARGV[1] then return -1 end
local first = tonumber(ARGV[3])
local n = #ARGV - 6
-- Sent again after a round that failed on the way: already stored.
if m[2] == ARGV[2] and first + n - 1 <= tonumber(m[3]) then return 1 end
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[6]) then return -3 end
if m[2] ~= ARGV[2] or tonumber(m[3]) + 1 ~= first then return {-2, tonumber(m[3])} end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 7))
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('HSET', KEYS[1], 'top', first + n - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
