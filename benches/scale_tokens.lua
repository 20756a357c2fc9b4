-- wrk script for benches/cold_start.sh and benches/follower_load.sh: GET the
-- URL with `Authorization: Bearer <token>`, cycling through the tokens in the
-- file named by $KEYGATE_TOKENS (one per line). Thread i of $WRK_THREADS
-- starts at token i * (#tokens / $WRK_THREADS), so the threads walk disjoint
-- stretches and a run touches as many distinct keys as it makes requests (up
-- to all of them).
local tokens = {}
for line in io.lines(os.getenv("KEYGATE_TOKENS")) do
  tokens[#tokens + 1] = "Bearer " .. line
end
assert(#tokens > 0, "no tokens in " .. os.getenv("KEYGATE_TOKENS"))

local threads = tonumber(os.getenv("WRK_THREADS") or "1")
local counter = 0
local next_thread = 0

function setup(thread)
  thread:set("index", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  counter = (index or 0) * math.floor(#tokens / threads)
end

function request()
  local token = tokens[(counter % #tokens) + 1]
  counter = counter + 1
  return wrk.format("GET", nil, { Authorization = token })
end
