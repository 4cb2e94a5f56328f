-- Claims a room for a new owner: KEYS = {meta, list}; ARGV = {token, epoch, fresh, ttl_ms}.
-- The room keeps its epoch and top seq, and the caller's token becomes the
-- only one whose appends are accepted (fencing the previous owner). A room
-- the store does not have (never used, flushed, expired) or a claim asked to
-- be fresh (the store lost data) starts the caller's new epoch at seq 0.
local e = redis.call('HGET', KEYS[1], 'epoch')
if (not e) or ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'top', 0, 'owner', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {ARGV[2], '0'}
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {e, redis.call('HGET', KEYS[1], 'top')}
