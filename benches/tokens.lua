-- wrk script for benches/load.sh: GET the URL with `Authorization: Bearer <token>`,
-- cycling through the tokens in the file named by $KEYGATE_TOKENS (one per
-- line). Each wrk thread starts at its own offset. Both the known-key run
-- (a file holding one token) and the unknown-id flood (a file of random,
-- well-formed tokens) use this script, so wrk does the same work per request.
local tokens = {}
for line in io.lines(os.getenv("KEYGATE_TOKENS")) do
  tokens[#tokens + 1] = "Bearer " .. line
end
assert(#tokens > 0, "no tokens in " .. os.getenv("KEYGATE_TOKENS"))

local counter = 0
local next_thread = 0

function setup(thread)
  thread:set("offset", next_thread * 7919)
  next_thread = next_thread + 1
end

function init(args)
  counter = offset or 0
end

function request()
  counter = counter + 1
  local headers = { Authorization = tokens[(counter % #tokens) + 1] }
  return wrk.format("GET", nil, headers)
end
