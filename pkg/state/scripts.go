package state

// The sync function's decisions are Lua scripts, so each is atomic and one
// round trip. Times are Unix milliseconds by Redis's clock (TIME), one
// clock for every sync instance; change times come from Dovecot hosts, and
// the clock-skew margin absorbs the difference.
//
// Coalescing: last_start is the start of the last successful dsync; a
// change older than last_start - margin is covered (Begin). A change that
// takes the lock is left in PendingKey too, so that one whose owner dies
// is not lost. A change that
// arrives while the lock is held is left in PendingKey (ZADD LT keeps the
// oldest time, as ingest's MarkPending does). If its time is at or after
// the running attempt's start - margin, the attempt may not cover it: it
// also sets the "marked since this attempt started" fields pending_last,
// pending_first and pending_host. Ingest's MarkPending sets pending_host
// and pending_first too. Each attempt's start deletes those fields; so
// when an attempt succeeds, their absence means every mark in PendingKey
// was recorded before the attempt started, hence describes a change that
// happened before it, and the entry is removed. Their presence makes the
// owner run once more, and the entry's time becomes pending_first, the
// oldest change the attempt did not cover. Marks recorded before the
// start need no clock comparison: they arrived first.

// luaPrelude is shared by the scripts: the clock and the start of an
// attempt (the lock is already held).
const luaPrelude = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(v)
  return tonumber(v) or 0
end
-- The clock: TIME, never below the high-water mark attempt starts raise
-- (ClockKey).
local CLOCK = 'dovewarden:clock'
-- The users whose attempt runs, scored by its start (RunningKey). An
-- entry whose lock expired (its owner died) stays until the owner's late
-- outcome, the user's next attempt, or an event that finds the user
-- excluded; Running leaves it out.
local RUNNING = 'dovewarden:running'
local function mono_ms()
  return math.max(now_ms(), num(redis.call('GET', CLOCK)))
end
-- The hosts marks were seen on, one per line (host names hold no line
-- break), at most MAXHOSTS: pending_hosts for marks no attempt has taken
-- over yet, inprogress_hosts for those the running attempt took over. A
-- host that answers "no such user" says nothing of a change seen on
-- another, which may know the user (Fail).
local MAXHOSTS = 16
-- The busy Begin calls counted in pending_count since the running attempt
-- started, the newest MAXCALLS (pending_calls): a call sent again comes
-- right after the first, within go-redis's retry backoff.
local MAXCALLS = 16
local function hosts_of(h, field)
  local out = {}
  for x in string.gmatch(redis.call('HGET', h, field) or '', '[^\n]+') do table.insert(out, x) end
  return out
end
local function add_hosts(h, field, list)
  local cur = hosts_of(h, field)
  local seen, grew = {}, false
  for _, x in ipairs(cur) do seen[x] = true end
  for _, x in ipairs(list) do
    if x ~= '' and not seen[x] and #cur < MAXHOSTS then
      table.insert(cur, x)
      seen[x], grew = true, true
    end
  end
  if grew then redis.call('HSET', h, field, table.concat(cur, '\n')) end
end
-- mark_first lowers pending_first, the oldest time of the marks the
-- running attempt does not cover (those that set pending_last,
-- pending_host or full_requested since it started), to at: a success
-- that leaves them moves the user's pending time to it (Succeed).
local function mark_first(h, at)
  local first = num(redis.call('HGET', h, 'pending_first'))
  if first <= 0 or at < first then redis.call('HSET', h, 'pending_first', at) end
end
-- start an attempt: KEYS[2] user hash, KEYS[3] pending zset, skey the
-- state hash; returns the Run claim. What the attempt took over (merged
-- marks, a full sync asked for) is kept with it, so that a call the client
-- sends again gets the same claim (claim).
local function start(now, user, owner, host, skey, dest, call, full)
  local h = KEYS[2]
  -- After the attempt before, also while the clock stands still (TIME
  -- stepped back below the high-water mark): Fail tells a retry's failure
  -- from the same call sent again by the attempt's start.
  local prev = num(redis.call('HGET', h, 'inprogress_since'))
  if now <= prev then now = prev + 1 end
  -- The clock's high-water mark: stamps taken after this start are never
  -- before it, even if the Redis clock steps back (Now).
  if num(redis.call('GET', CLOCK)) < now then redis.call('SET', CLOCK, now) end
  local merged = num(redis.call('HGET', h, 'pending_count'))
  -- A full sync the attempt before ran and did not record as a success
  -- is still asked for: this one retries it (Restart), or takes over
  -- from an owner that died or lost its reply before Fail could ask for
  -- it again. Its start took full_requested over, and nothing else keeps
  -- it. (A success of it set last_full_start to its start.)
  local carried = redis.call('HGET', h, 'inprogress_full') == '1'
    and num(redis.call('HGET', h, 'last_full_start')) < prev
  local fullreq = (redis.call('HGET', h, 'full_requested') == '1' or carried) and 1 or 0
  -- Added to those of the attempt before, its own host among them, when
  -- this one retries it or takes over from an owner that died: their
  -- changes are not covered yet either.
  local before = redis.call('HGET', h, 'inprogress_host')
  if before then add_hosts(h, 'inprogress_hosts', {before}) end
  add_hosts(h, 'inprogress_hosts', hosts_of(h, 'pending_hosts'))
  redis.call('HDEL', h, 'pending_host', 'pending_last', 'pending_first', 'pending_count', 'full_requested', 'pending_hosts', 'pending_calls')
  -- inprogress_full: the attempt runs a full sync that was asked for, its
  -- own request's or one merged before it (a full request arriving while
  -- it runs is then covered by it, Begin).
  local fields = {'inprogress_since', now, 'inprogress_merged', merged, 'inprogress_full', (full or fullreq == 1) and 1 or 0,
    'inprogress_call', call}
  if owner ~= '' then table.insert(fields, 'inprogress_by'); table.insert(fields, owner) end
  if host ~= '' then table.insert(fields, 'inprogress_host'); table.insert(fields, host) end
  redis.call('HSET', h, unpack(fields))
  redis.call('ZADD', RUNNING, now, user)
  local since = num(redis.call('ZSCORE', KEYS[3], user))
  local st = redis.call('HGET', skey, dest) or ''
  return {'run', now, since, merged, st, fullreq}
end
-- claim answers the running attempt's Run claim again, as start did.
local function claim(user, skey, dest)
  local v = redis.call('HMGET', KEYS[2], 'inprogress_since', 'inprogress_merged', 'inprogress_full')
  local since = num(redis.call('ZSCORE', KEYS[3], user))
  local st = redis.call('HGET', skey, dest) or ''
  return {'run', num(v[1]), since, num(v[2]), st, num(v[3])}
end
-- The fields of a running attempt, removed when its lock is released.
local INPROGRESS = {'inprogress_by', 'inprogress_since', 'inprogress_host', 'inprogress_merged', 'inprogress_full',
  'inprogress_call', 'inprogress_hosts'}
-- started tells whether the call that started the running attempt was
-- call (new for each Succeed and Restart): then the client sent it again
-- after losing the reply.
local function started(call)
  return call ~= '' and redis.call('HGET', KEYS[2], 'inprogress_call') == call
end
-- release ends the running attempt of user, whose lock (KEYS[1]) the
-- caller owns: the lock goes, and the attempt's fields of h.
local function release(user, h)
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', h, unpack(INPROGRESS))
  redis.call('ZREM', RUNNING, user)
end
-- forget_dead drops user's RUNNING entry when no lock is held (KEYS[1]):
-- its owner died, and no attempt of it runs. Callers that do not own the
-- lock call it, so that no entry outlives every attempt of its user.
local function forget_dead(user)
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', RUNNING, user) end
end
-- excluded_release ends what is left of a user excluded while an attempt
-- ran: its pending and failed marks, which Begin drops for an excluded
-- user too, and, for the lock's owner (owned), the lock (KEYS[1]), the
-- running attempt's fields and the changes merged for a rerun.
local function excluded_release(user, h, pending, failed, owned)
  redis.call('ZREM', pending, user)
  redis.call('ZREM', failed, user)
  if owned then
    redis.call('HDEL', h, 'pending_host', 'pending_last', 'pending_first', 'pending_count', 'full_requested', 'pending_hosts', 'pending_calls')
    release(user, h)
  end
end
`

// scriptBegin: KEYS lock, user, pending, excluded, state.
// ARGV user, token, ttl, at, margin, host, owner, destination, full.
var scriptBegin = newScript(luaPrelude + `
local user, token, ttl, margin = ARGV[1], ARGV[2], ARGV[3], num(ARGV[5])
local host, owner, dest, full = ARGV[6], ARGV[7], ARGV[8], ARGV[9] == '1'
-- Never before the clock's high-water mark, as Now stamps changes: a
-- stamp from after a step back of TIME is not taken for a future one.
local now = mono_ms()
local at = num(ARGV[4])
if at <= 0 or at > now then at = now end
if redis.call('GET', KEYS[1]) == token then
  -- This very call took the lock (tokens are new for each call): the
  -- client sent it again after losing the reply. Answer its claim again.
  redis.call('PEXPIRE', KEYS[1], ttl)
  return claim(user, KEYS[5], dest)
end
if redis.call('SISMEMBER', KEYS[4], user) == 1 then
  -- Never replicated: no mark of it waits for a dsync, nor counts it as
  -- failing (an admin may have excluded it for failing); nor an entry in
  -- RUNNING of an owner that died, which no attempt of it will end.
  redis.call('ZREM', KEYS[3], user)
  redis.call('ZREM', 'dovewarden:failed', user)
  forget_dead(user)
  return {'excluded'}
end
local last = num(redis.call('HGET', KEYS[2], 'last_start'))
if not full and last > 0 and at < last - margin then
  return {'covered', last}
end
-- A full request asks for everything to be compared after it was made: a
-- successful full dsync that started after it did that (a request the
-- Broker delivers again, a sweep batch sent again).
local lastfull = num(redis.call('HGET', KEYS[2], 'last_full_start'))
if full and lastfull > 0 and at < lastfull - margin then
  return {'covered', lastfull}
end
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ttl) then
  -- The change stays marked until a Succeed finds nothing newer: if the
  -- owner dies, the next event or the sweep replicates the user.
  redis.call('ZADD', KEYS[3], 'LT', at, user)
  return start(now, user, owner, host, KEYS[5], dest, '', full)
end
-- Busy: leave a pending mark the owner (or, if it died, the next event or
-- the sweep) picks up.
redis.call('ZADD', KEYS[3], 'LT', at, user)
add_hosts(KEYS[2], 'pending_hosts', {host})
-- Counted once: the same call sent again (the client lost the reply) is
-- found among the last busy calls, one per line, and changes nothing
-- else either (the marks above keep the oldest time, the newest below).
local calls = hosts_of(KEYS[2], 'pending_calls')
local again = false
for _, x in ipairs(calls) do if x == token then again = true end end
if not again then redis.call('HINCRBY', KEYS[2], 'pending_count', 1) end
if not again and token ~= '' then
  table.insert(calls, token)
  if #calls > MAXCALLS then table.remove(calls, 1) end
  redis.call('HSET', KEYS[2], 'pending_calls', table.concat(calls, '\n'))
end
local since = num(redis.call('HGET', KEYS[2], 'inprogress_since'))
-- A full request older than a running full sync is covered by it: no
-- rerun. If that attempt fails, its release asks for a full sync again.
local coveredfull = full and at < since - margin and redis.call('HGET', KEYS[2], 'inprogress_full') == '1'
if full and not coveredfull then
  redis.call('HSET', KEYS[2], 'full_requested', '1')
end
if (full and not coveredfull) or at >= since - margin then
  if at > num(redis.call('HGET', KEYS[2], 'pending_last')) then
    redis.call('HSET', KEYS[2], 'pending_last', at)
  end
  mark_first(KEYS[2], at)
  if host ~= '' then redis.call('HSET', KEYS[2], 'pending_host', host) end
end
return {'busy', redis.call('HGET', KEYS[2], 'inprogress_by') or '', since}
`)

// scriptRestart: KEYS lock, user, pending, state, failed, excluded. ARGV
// user, token, ttl, destination, call.
var scriptRestart = newScript(luaPrelude + `
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return {'lost'}
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if started(ARGV[5]) then
  -- This call already started the next attempt: answer its claim again.
  return claim(ARGV[1], KEYS[4], ARGV[4])
end
if redis.call('SISMEMBER', KEYS[6], ARGV[1]) == 1 then
  -- Excluded while the attempt ran: no retry. The lock goes, and the
  -- marks, as Begin keeps none for an excluded user.
  excluded_release(ARGV[1], KEYS[2], KEYS[3], KEYS[5], true)
  return {'excluded'}
end
return start(mono_ms(), ARGV[1], '', '', KEYS[4], ARGV[4], ARGV[5], false)
`)

// scriptRenew: compare-and-pexpire. KEYS lock. ARGV token, ttl.
var scriptRenew = newScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// scriptSucceed: KEYS lock, user, pending, failed, state, excluded.
// ARGV user, token, start, destination, new state, host, full, ttl, may
// rerun, rerun (the owner merged newer changes in-process), call, drop
// state (the dsync's state was too large to keep).
var scriptSucceed = newScript(luaPrelude + `
local user, token, st = ARGV[1], ARGV[2], num(ARGV[3])
local dest, newstate, host = ARGV[4], ARGV[5], ARGV[6]
local h = KEYS[2]
local now = mono_ms()
local owned = redis.call('GET', KEYS[1]) == token
-- This call already ran and answered done or left (the lock released):
-- answer that again, with the busy changes it counted as covered. Run
-- again it would find the lock not its own and answer left, which costs
-- a dsync for nothing.
local answered = redis.call('HGET', h, 'last_success_call')
if not owned and answered and ARGV[11] ~= '' and string.sub(answered, 1, #ARGV[11] + 1) == ARGV[11] .. ' ' then
  local a, n = string.match(string.sub(answered, #ARGV[11] + 2), '^(%a+) ?(%d*)$')
  if a == 'done' or a == 'left' then
    return {a, num(redis.call('HGET', h, 'last_success')), num(n)}
  end
end
if not owned then forget_dead(user) end
if owned and started(ARGV[11]) then
  -- This call already ran and started the next attempt. That attempt's
  -- marks were cleared by its start, so answering from them again would
  -- say done and drop them: answer its claim again.
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  local c = claim(user, KEYS[5], dest)
  table.insert(c, 2, num(redis.call('HGET', h, 'last_success')))
  return c
end
-- The dsync state is this attempt's to write unless an attempt that
-- started after it (its lock expired while it ran) already succeeded: that
-- one's state is newer, and the next dsync starts from it, not from the
-- older one this attempt brings late.
local last_start = num(redis.call('HGET', h, 'last_start'))
if owned or st >= last_start then
  if newstate ~= '' then
    redis.call('HSET', KEYS[5], dest, newstate)
  elseif ARGV[12] == '1' then
    redis.call('HDEL', KEYS[5], dest)
  end
end
if st > last_start then
  redis.call('HSET', h, 'last_start', st)
end
redis.call('HSET', h, 'last_success', now, 'last_success_host', host, 'last_destination', dest,
  'last_duration_ms', now - st, 'last_full', ARGV[7])
-- The periodic full sync counts from the last full one, also when
-- incremental dsyncs followed it (the sweep's "stale").
if ARGV[7] == '1' and st > num(redis.call('HGET', h, 'last_full_start')) then
  redis.call('HSET', h, 'last_full_start', st)
end
-- A failure recorded after this attempt started (another owner's, once
-- this one's lock had expired) is newer news: the user stays failed. One
-- recorded in the same millisecond is older: its attempt started before
-- this one took the lock.
if owned or st >= num(redis.call('HGET', h, 'last_failure')) then
  redis.call('HSET', h, 'failures', 0)
  redis.call('ZREM', KEYS[4], user)
end
if redis.call('SISMEMBER', KEYS[6], user) == 1 then
  -- Excluded while the attempt ran: no rerun for the changes that came
  -- meanwhile, and no mark left for them, as Begin keeps none.
  excluded_release(user, h, KEYS[3], KEYS[4], owned)
  return {'done', now}
end
if not owned and ARGV[10] == '1' then
  -- The owner merged changes seen after this attempt started, and the
  -- lock is no longer its own: no rerun of its own will cover them, and
  -- another owner may already have cleared the pending set. Mark them
  -- for that owner (if one runs) and for the sweep.
  redis.call('ZADD', KEYS[3], 'LT', st, user)
  if host ~= '' then redis.call('HSET', h, 'pending_host', host) end
  add_hosts(h, 'pending_hosts', {host})
  mark_first(h, st)
end
-- Marked since the attempt started? Only when the caller still owns the
-- lock are those fields about its attempt; otherwise another owner's
-- attempt may have reset them, and the entry is left to that owner.
local newer = not owned
  or redis.call('HEXISTS', h, 'pending_last') == 1
  or redis.call('HEXISTS', h, 'pending_host') == 1
  or redis.call('HGET', h, 'full_requested') == '1'
  or ARGV[10] == '1'
-- The busy changes counted since the attempt started happened before it
-- (none is marked since it started): it covered them, and its answer
-- says how many, as a next attempt's claim says how many it takes over.
local covered = 0
if not newer then
  covered = num(redis.call('HGET', h, 'pending_count'))
  redis.call('ZREM', KEYS[3], user)
  redis.call('HDEL', h, 'pending_count', 'pending_hosts', 'pending_calls')
end
if newer and owned then
  -- This attempt covered every change before it started: the user is
  -- pending for the marks since, from the oldest of them (changes merged
  -- in-process were seen after the start), not from a change it covered.
  local first = num(redis.call('HGET', h, 'pending_first'))
  if ARGV[10] == '1' and (first <= 0 or st < first) then first = st end
  if first > 0 then redis.call('ZADD', KEYS[3], 'XX', 'GT', first, user) end
end
if newer and owned and ARGV[9] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  -- This attempt covered the changes it took over.
  redis.call('HDEL', h, 'inprogress_hosts')
  local c = start(now, user, '', '', KEYS[5], dest, ARGV[11])
  table.insert(c, 2, now)
  return c
end
if owned then
  release(user, h)
end
local answer = newer and 'left' or 'done'
redis.call('HSET', h, 'last_success_call', ARGV[11] .. ' ' .. answer .. ' ' .. covered)
return {answer, now, covered}
`)

// scriptFail: KEYS lock, user, pending, failed, dsync state, excluded, gone.
// ARGV user, token, at, error, exit code, class, final, release, host,
// full asked, the failed attempt's start, gone, rerun (the owner merged
// newer changes in-process), counted (the failure is recorded already).
var scriptFail = newScript(luaPrelude + `
local user, token, at = ARGV[1], ARGV[2], num(ARGV[3])
local h = KEYS[2]
-- One owner records an attempt's failure once, or once more to give up
-- its lock: the same call again is the client resending it after losing
-- the reply, and counting it twice would overstate the failures.
local call = token .. ' ' .. ARGV[11] .. ' ' .. ARGV[7] .. ARGV[8]
if token ~= '' and redis.call('HGET', h, 'last_failure_call') == call then
  return num(redis.call('HGET', h, 'last_failure'))
end
-- now, TIME, scores the failed set and the gone set: the sweep retries
-- and prunes by it (Store.Time). The record's last_failure is stamped
-- with the clock attempt starts are taken on (mono_ms), as Succeed
-- stamps last_success, because it is compared with them: "a failure
-- recorded after this attempt started" holds across a step back of TIME.
local now = now_ms()
local stamp = mono_ms()
-- A user found gone whose record is dropped already: this call's first
-- run dropped it (the client sent it again after losing the reply; the
-- call was recorded in the record), or another attempt's answer did. No
-- attempt runs (an attempt's start writes the record), and the marks
-- went with it: a failure recorded now would bring the record back.
if ARGV[12] == '1' and redis.call('EXISTS', h) == 0 then
  forget_dead(user)
  return now
end
if at <= 0 or at > stamp then at = stamp end
local prev_failure = num(redis.call('HGET', h, 'last_failure'))
-- Counted (ARGV[14]): a release after a retry's backoff was cut off; the
-- attempt's failure was recorded when it failed.
if ARGV[14] ~= '1' then
  redis.call('HSET', h, 'last_failure', stamp, 'last_error', ARGV[4], 'last_exit_code', ARGV[5], 'last_failure_class', ARGV[6],
    'last_failure_call', call)
  redis.call('HINCRBY', h, 'failures', 1)
end
local owned = ARGV[8] == '1' and redis.call('GET', KEYS[1]) == token
if not owned then forget_dead(user) end
local st = num(ARGV[11])
-- Another attempt started after this one, whose lock expired while it
-- ran: it succeeded, failed (as Succeed, a failure recorded after this
-- attempt started) or runs. Its outcome is newer news of the user, and
-- the marks and states are left to it: a failure it recorded keeps the
-- user failed and its change pending; its dsync covers this attempt's
-- changes, which happened before it started.
local superseded = ARGV[8] == '1' and not owned and st > 0 and (num(redis.call('HGET', h, 'last_start')) > st
  or prev_failure > st or num(redis.call('HGET', h, 'inprogress_since')) > st)
if ARGV[12] == '1' then
  if superseded then return now end
  -- The user no longer exists: nothing is left to replicate, and marks
  -- would have the sweep try it again for ever.
  redis.call('ZREM', KEYS[4], user)
  redis.call('DEL', KEYS[5])
  -- A change marked (or merged in-process) since this attempt started,
  -- from another host, which may know the user (it moved there), is not
  -- covered by this answer: it stays pending, with its host when marked
  -- in Redis, for the next event or the sweep. When the lock is not this owner's, the fields are another
  -- attempt's, and the marks are left to it.
  local newer = ARGV[13] == '1'
    or redis.call('HEXISTS', h, 'pending_last') == 1
    or redis.call('HEXISTS', h, 'pending_host') == 1
    or redis.call('HGET', h, 'full_requested') == '1'
  -- So is a change seen on another host that this attempt took over (a
  -- rerun's, a retry's, one marked before it started) or that came
  -- meanwhile, however old: it stays pending, from that host. The host
  -- that answered is no longer asked for it, so the next attempts end.
  local others = {}
  -- The fields are this attempt's while it holds the lock, and when no
  -- attempt holds it and none started after this one (not superseded).
  if owned or redis.call('EXISTS', KEYS[1]) == 0 then
    for _, f in ipairs({'inprogress_hosts', 'pending_hosts'}) do
      for _, x in ipairs(hosts_of(h, f)) do
        if x ~= ARGV[9] then table.insert(others, x) end
      end
    end
  end
  if #others > 0 then
    redis.call('HDEL', h, 'pending_hosts')
    add_hosts(h, 'pending_hosts', others)
    local ph = redis.call('HGET', h, 'pending_host')
    if not ph or ph == ARGV[9] then redis.call('HSET', h, 'pending_host', others[1]) end
    redis.call('ZADD', KEYS[3], 'LT', at, user)
    newer = true
    -- An attempt whose lock expired is over too: its fields would have
    -- the next attempt's start take its host back.
    if not owned then redis.call('HDEL', h, unpack(INPROGRESS)) end
  end
  if owned and newer then
    release(user, h)
  elseif owned then
    -- The owner drops the record too, as Dovecot 2.3's replicator removed
    -- the user: else the records of deleted users would pile up, and
    -- --sweep-list known would sweep them for ever.
    -- Its entry in the sweep's full requests stays: a host that still
    -- lists the user is asked once per full-sync interval, not at every
    -- sweep (the sweep prunes it).
    redis.call('ZREM', KEYS[3], user)
    release(user, h)
    redis.call('DEL', h)
    -- When, for the sweep's recovery (SweepGoneKey): it has no record to
    -- tell that the user was tried since.
    redis.call('ZADD', KEYS[7], now, user)
  elseif not newer and redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('ZREM', KEYS[3], user)
    redis.call('ZADD', KEYS[7], now, user)
  end
  return now
end
if redis.call('SISMEMBER', KEYS[6], user) == 1 then
  -- Excluded while the attempt ran: its failure is recorded above, but no
  -- mark is left for a retry or the sweep, as Begin keeps none, and the
  -- owner gives up its lock.
  excluded_release(user, h, KEYS[3], KEYS[4], owned)
  return now
end
if superseded then
  -- Except a full sync this attempt was asked for: it stays asked for
  -- unless a full dsync started after this attempt, and succeeded or
  -- runs.
  local running = num(redis.call('HGET', h, 'inprogress_since')) > st
  if ARGV[10] == '1' and num(redis.call('HGET', h, 'last_full_start')) <= st
      and not (running and redis.call('HGET', h, 'inprogress_full') == '1') then
    redis.call('ZADD', KEYS[3], 'LT', at, user)
    redis.call('HSET', h, 'full_requested', '1')
    mark_first(h, at)
  end
  return now
end
if ARGV[7] == '1' then
  redis.call('ZADD', KEYS[4], now, user)
end
if ARGV[8] == '1' then
  -- What the owner acknowledged stays marked, with its host, for the next
  -- event or the sweep.
  redis.call('ZADD', KEYS[3], 'LT', at, user)
  if ARGV[9] ~= '' then redis.call('HSET', h, 'pending_host', ARGV[9]) end
  add_hosts(h, 'pending_hosts', {ARGV[9]})
  -- A full sync asked for and not done stays asked for.
  if ARGV[10] == '1' then redis.call('HSET', h, 'full_requested', '1') end
  if redis.call('GET', KEYS[1]) == token then
    -- So do the hosts of the changes the attempt took over, and a full
    -- sync it took over (a retry whose start the owner never heard of,
    -- its answer lost): the release drops the attempt's fields.
    add_hosts(h, 'pending_hosts', hosts_of(h, 'inprogress_hosts'))
    if redis.call('HGET', h, 'inprogress_full') == '1'
        and num(redis.call('HGET', h, 'last_full_start')) < num(redis.call('HGET', h, 'inprogress_since')) then
      redis.call('HSET', h, 'full_requested', '1')
    end
    release(user, h)
  end
end
return now
`)

// scriptMarkPending: KEYS pending, user. ARGV user, at, host. Ingest's
// mark of a change no sync function was handed.
var scriptMarkPending = newScript(luaPrelude + `
redis.call('ZADD', KEYS[1], 'LT', ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'pending_host', ARGV[3])
add_hosts(KEYS[2], 'pending_hosts', {ARGV[3]})
-- Not after now: a Dovecot host's clock ahead would otherwise move the
-- user's pending time into the future when the running attempt succeeds.
mark_first(KEYS[2], math.min(num(ARGV[2]), mono_ms()))
return 1
`)

// scriptNow: the Redis clock in Unix milliseconds, never before the start
// of an attempt already recorded (the clock's high-water mark, ClockKey):
// a change stamped with it after a dsync started compares as after that
// start even when TIME has stepped back (an NTP step, a failover to a host
// whose clock lags).
var scriptNow = newScript(luaPrelude + `
return mono_ms()
`)

// scriptTime: Redis's TIME in Unix milliseconds, as the failure and sweep
// scripts read it (now_ms), without Now's high-water mark.
var scriptTime = newScript(luaPrelude + `
return now_ms()
`)

// scriptForgetExcluded: KEYS excluded, pending, failed. ARGV users. Drops
// the pending and failed marks of those still excluded; returns how many.
var scriptForgetExcluded = newScript(`
local n = 0
for _, user in ipairs(ARGV) do
  if redis.call('SISMEMBER', KEYS[1], user) == 1 then
    n = n + redis.call('ZREM', KEYS[2], user) + redis.call('ZREM', KEYS[3], user)
  end
end
return n
`)
