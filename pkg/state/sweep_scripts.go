package state

// The sweep's scripts. A sweep spans many invocations of the sync function,
// possibly on different instances, so its progress lives in Redis:
//
//   - SweepLockKey names the running sweep (its id) and expires after the
//     lock TTL unless a batch renews it: a sweep whose continuation event
//     was lost stops blocking new sweeps.
//   - SweepClaimKey is held (a random token, with a TTL just above one
//     invocation's budget) by the one invocation working on the sweep right
//     now: listing, or one batch. A duplicate delivery of the same
//     continuation finds it held and is answered 503, so the Broker tries
//     it again later instead of running the batch twice.
//   - SweepKey's "offset" is the position of the next batch; a batch is
//     committed only from the offset it claimed, so an old continuation
//     that arrives late changes nothing.
//
// Times are Unix milliseconds by Redis's clock, like the sync scripts.

// luaSweepFinish ends a sweep: KEYS[1] lock, KEYS[2] claim, KEYS[3] meta,
// KEYS[4] the sweep's users.
const luaSweepFinish = `
local function finish(id, now)
  redis.call('HSET', KEYS[3], 'finished', now)
  -- The last completed sweep is the last that listed every user: a retry
  -- sweep (failed and pending users only) does not count.
  if redis.call('HGET', KEYS[3], 'reason') ~= 'retry' then
    redis.call('HSET', KEYS[3], 'last_completed_id', id,
      'last_completed_start', redis.call('HGET', KEYS[3], 'started') or '', 'last_completed_end', now)
  end
  if redis.call('GET', KEYS[1]) == id then redis.call('DEL', KEYS[1]) end
  -- UNLINK: Redis frees the candidates in the background. DEL of a
  -- million took 169 ms, with Redis answering nothing else.
  redis.call('UNLINK', KEYS[2], KEYS[4])
end
`

// scriptSweepBegin: KEYS lock, claim, meta, recovery. ARGV id, token,
// lock ttl, claim ttl, reason.
var scriptSweepBegin = newScript(luaPrelude + `
local cur = redis.call('GET', KEYS[1])
-- The claim is this call's (tokens are new for each call): the client sent
-- it again after losing the reply. Answer as the first run did.
if redis.call('GET', KEYS[2]) == ARGV[2] then
  local id = redis.call('HGET', KEYS[3], 'id') or ''
  local started = redis.call('HGET', KEYS[3], 'started') or ''
  if id == ARGV[1] then
    return {'started', id, tonumber(started) or 0, redis.call('HGET', KEYS[3], 'abandoned') or '',
      redis.call('HGET', KEYS[3], 'replaced') or ''}
  end
  return {'relist', id, started, redis.call('HGET', KEYS[3], 'reason') or ''}
end
local same = cur and redis.call('HGET', KEYS[3], 'id') == cur
local started = redis.call('HGET', KEYS[3], 'started') or ''
-- A sweep that started before the recovery time (local mode's last run
-- stopped during it) judged some users without that time, and covers no
-- request: a new sweep replaces it, as an abandoned one.
local replaced = ''
-- On the clock of the recovery time (began; started, by TIME, for a sweep
-- begun before began was kept): after a step back of TIME the recovery
-- time is past TIME, and by started a sweep begun after it would look
-- older, replaced by every sweep asked for until TIME caught up.
local began = redis.call('HGET', KEYS[3], 'began') or started
local before = same and num(began) < num(redis.call('GET', KEYS[4]))
if cur and before then replaced = 'recovery' end
if cur and not before then
  -- A sweep that lists every user takes the failed and pending users a
  -- running retry sweep takes, and more: it replaces the retry sweep at
  -- once. Asked to wait instead, it could run out of the Broker's retries
  -- behind a long retry sweep. The retry sweep's step at work finds its
  -- claim and sweep gone, and records nothing but the full syncs it asked
  -- for (scriptSweepCommit).
  local running = redis.call('HGET', KEYS[3], 'reason') or ''
  if same and ARGV[5] ~= 'retry' and running == 'retry' then
    replaced = 'retry'
  end
  -- An administrator's sweep (any reason but dovewarden's own) retries
  -- the failed users at once, which a running sweep of dovewarden's own
  -- leaves until their retry is due: it replaces that sweep at once.
  -- Covered instead, the administrator who fixed a cause would wait for
  -- the retry interval, told nothing.
  local own = {[''] = true, start = true, schedule = true, recovery = true, retry = true}
  if same and replaced == '' and not own[ARGV[5]] and own[running] then
    replaced = 'asked'
  end
end
if cur and replaced == '' then
  -- A running sweep without a total and with nobody claiming it lost its
  -- listing invocation (crash, timeout): list again under the same id.
  if same and redis.call('HEXISTS', KEYS[3], 'total') == 0
     and redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[4]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return {'relist', cur, started, redis.call('HGET', KEYS[3], 'reason') or ''}
  end
  -- Listed, and no batch recorded nor claimed: its first continuation is
  -- on its way, or was lost with the listing step's answer. With when it
  -- was listed, the caller tells the two apart.
  local listed_at = redis.call('HGET', KEYS[3], 'listed_at')
  if same and listed_at and redis.call('HEXISTS', KEYS[3], 'finished') == 0
     and num(redis.call('HGET', KEYS[3], 'batches')) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
    return {'running', cur, started, redis.call('HGET', KEYS[3], 'reason') or '', num(listed_at), now_ms()}
  end
  return {'running', cur, started, redis.call('HGET', KEYS[3], 'reason') or ''}
end
local now = now_ms()
local prev = redis.call('HGET', KEYS[3], 'id') or ''
local abandoned = ''
if prev ~= '' and redis.call('HEXISTS', KEYS[3], 'finished') == 0 then abandoned = prev end
local names = {'last_completed_id', 'last_completed_start', 'last_completed_end'}
local keep = redis.call('HMGET', KEYS[3], unpack(names))
redis.call('DEL', KEYS[3])
-- A recovery time set by now is not after this sweep, whatever TIME says.
local began = math.max(mono_ms(), num(redis.call('GET', KEYS[4])))
redis.call('HSET', KEYS[3], 'id', ARGV[1], 'reason', ARGV[5], 'started', now, 'began', began, 'offset', 0, 'batches', 0)
-- Kept for a resent call, which must report it too.
if abandoned ~= '' then redis.call('HSET', KEYS[3], 'abandoned', abandoned) end
if replaced ~= '' then redis.call('HSET', KEYS[3], 'replaced', replaced) end
for i, v in ipairs(keep) do
  if v then redis.call('HSET', KEYS[3], names[i], v) end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
return {'started', ARGV[1], now, abandoned, replaced}
`)

// scriptSweepListed: KEYS lock, claim, meta, users, pending, failed.
// ARGV id, token, hosts (JSON), listed, users ttl, lock ttl, bad names.
var scriptSweepListed = newScript(luaPrelude + luaSweepFinish + `
local id = ARGV[1]
if redis.call('HGET', KEYS[3], 'id') == id and redis.call('HGET', KEYS[3], 'listed_by') == ARGV[2] then
  -- This call already recorded the listing (the client sent it again after
  -- losing the reply): answer as the first run did.
  if redis.call('HEXISTS', KEYS[3], 'finished') == 1 then
    return {'finished', num(redis.call('HGET', KEYS[3], 'finished')), 0}
  end
  return {'ok', now_ms(), num(redis.call('HGET', KEYS[3], 'total'))}
end
if redis.call('GET', KEYS[2]) ~= ARGV[2] or redis.call('HGET', KEYS[3], 'id') ~= id then
  -- With the sweep that runs now: another one, when it replaced this.
  return {'lost', redis.call('HGET', KEYS[3], 'id') or ''}
end
redis.call('HSET', KEYS[3], 'listed_by', ARGV[2])
-- Listed users keep their host (score: host index + 1); pending and failed
-- users no host listed join with score 0. Added a chunk at a time, not by
-- a ZUNIONSTORE of the three, which rewrote the whole candidate list with
-- Redis answering nothing else: 2.9 s for a million users, at every sweep.
for _, k in ipairs({KEYS[5], KEYS[6]}) do
  local n = redis.call('ZCARD', k)
  for i = 0, n - 1, 1000 do
    local args = {}
    for _, u in ipairs(redis.call('ZRANGE', k, i, i + 999)) do
      args[#args + 1] = 0
      args[#args + 1] = u
    end
    if #args > 0 then redis.call('ZADD', KEYS[4], 'NX', unpack(args)) end
  end
end
local total = redis.call('ZCARD', KEYS[4])
local now = now_ms()
redis.call('HSET', KEYS[3], 'hosts', ARGV[3], 'listed', ARGV[4], 'total', total, 'listed_at', now)
if num(ARGV[7]) > 0 then redis.call('HINCRBY', KEYS[3], 'skipped_bad_user', ARGV[7]) end
if total == 0 then
  finish(id, now)
  return {'finished', now, 0}
end
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[4], ARGV[5])
redis.call('SET', KEYS[1], id, 'PX', ARGV[6])
return {'ok', now, total}
`)

// scriptSweepClaim: KEYS lock, claim, meta. ARGV id, offset, token, lock
// ttl, claim ttl.
var scriptSweepClaim = newScript(luaPrelude + `
local id = ARGV[1]
if redis.call('HGET', KEYS[3], 'id') ~= id or redis.call('HEXISTS', KEYS[3], 'finished') == 1
   or redis.call('HEXISTS', KEYS[3], 'total') == 0 then
  return {'stale'}
end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= id then return {'stale'} end
local off = redis.call('HGET', KEYS[3], 'offset')
if tonumber(off) ~= tonumber(ARGV[2]) then
  -- With whether a step holds the claim, when the last batch was
  -- recorded and from which offset (-1: unknown): the caller tells a
  -- redelivery beside a living chain of continuations from one whose
  -- continuation was lost.
  return {'duplicate', tonumber(off), redis.call('EXISTS', KEYS[2]), num(redis.call('HGET', KEYS[3], 'last_batch')), now_ms(),
    tonumber(redis.call('HGET', KEYS[3], 'last_from')) or -1}
end
-- A claim already this call's: the client sent it again after losing the
-- reply.
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[5]) and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return {'busy'}
end
-- Renew, or take back a lock that expired while the continuation was on
-- its way: nobody started another sweep meanwhile (the meta says so).
redis.call('SET', KEYS[1], id, 'PX', ARGV[4])
local m = redis.call('HMGET', KEYS[3], 'total', 'hosts', 'reason', 'started')
-- TIME decides; the requests are stamped with the clock dsync starts are
-- on (mono_ms), which a step back of TIME does not put behind them.
return {'ok', now_ms(), tonumber(m[1]), m[2] or '[]', m[3] or '', tonumber(m[4]) or 0, mono_ms()}
`)

// scriptSweepCommit: KEYS lock, claim, meta, users, full, asked, gone,
// recovery.
// ARGV id, token, from, to, lock ttl, users ttl, full-sync interval,
// number of counter pairs n, number of full users m, failed-retry
// interval, then n field/increment pairs, then the m users whose full
// sync was requested, then the users whose retry was asked for.
var scriptSweepCommit = newScript(luaPrelude + luaSweepFinish + `
local id = ARGV[1]
local call = ARGV[2] .. ' ' .. ARGV[3]
if redis.call('HGET', KEYS[3], 'id') == id and redis.call('HGET', KEYS[3], 'committed') == call then
  -- This call already recorded the batch (the client sent it again after
  -- losing the reply): answer as the first run did.
  if redis.call('HEXISTS', KEYS[3], 'finished') == 1 then
    return {'finished', num(redis.call('HGET', KEYS[3], 'finished'))}
  end
  return {'ok', num(redis.call('HGET', KEYS[3], 'last_batch'))}
end
local now = now_ms()
local n, m = tonumber(ARGV[8]), tonumber(ARGV[9])
local first = 11 + 2 * n
-- The full syncs were asked for, whether or not the batch is recorded: a
-- full request skips the "covered" check, so asking again (the step that
-- took the batch over, the sweep that replaced this one) would cost a
-- second full dsync. So were the retries, which the next sweeps leave
-- alone while they may wait in a lane, until the failed-retry interval has
-- passed again.
for i = first, first + m - 1 do
  redis.call('ZADD', KEYS[5], now, ARGV[i])
end
for i = first + m, #ARGV do
  redis.call('ZADD', KEYS[6], now, ARGV[i])
end
-- The claim may have expired under a slow step: the batch is still this
-- step's to record unless another step claimed it or moved the offset.
local claim = redis.call('GET', KEYS[2])
if (claim and claim ~= ARGV[2]) or redis.call('HGET', KEYS[3], 'id') ~= id
   or redis.call('HEXISTS', KEYS[3], 'finished') == 1
   or tonumber(redis.call('HGET', KEYS[3], 'offset')) ~= tonumber(ARGV[3]) then
  -- With the sweep that runs now: another one, when it replaced this.
  return {'lost', redis.call('HGET', KEYS[3], 'id') or ''}
end
redis.call('HSET', KEYS[3], 'offset', ARGV[4], 'last_batch', now, 'last_from', ARGV[3], 'committed', call)
redis.call('HINCRBY', KEYS[3], 'batches', 1)
for i = 0, n - 1 do
  redis.call('HINCRBY', KEYS[3], ARGV[11 + 2 * i], ARGV[12 + 2 * i])
end
if tonumber(ARGV[4]) >= num(redis.call('HGET', KEYS[3], 'total')) then
  -- Entries older than the interval mean the same as none: due. With
  -- periodic full syncs off, none means anything (UNLINK: the records
  -- of every user, left from when they were on, are freed in the
  -- background).
  local iv = num(ARGV[7])
  if iv > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. (now - iv)) else redis.call('UNLINK', KEYS[5]) end
  -- A retry asked for longer ago than the interval means nothing; a user
  -- found gone before the recovery time neither (none: all of them).
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. (now - num(ARGV[10])))
  local rec = num(redis.call('GET', KEYS[8]))
  if rec > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. rec) else redis.call('UNLINK', KEYS[7]) end
  finish(id, now)
  return {'finished', now}
end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], id, 'PX', ARGV[5])
redis.call('PEXPIRE', KEYS[4], ARGV[6])
return {'ok', now}
`)

// scriptCompareDelete: KEYS key. ARGV token.
var scriptCompareDelete = newScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// scriptSweepStop: KEYS lock, meta. ARGV id. Deletes the lock if it
// names id; returns the id of the sweep the meta names, empty for none.
var scriptSweepStop = newScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return redis.call('HGET', KEYS[2], 'id') or ''
`)
