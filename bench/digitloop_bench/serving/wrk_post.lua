-- wrk script: POST pre-encoded request bodies in turn, one per request.
-- Arguments (after `--`): <folder of NNNNN.body files> <count> <content type> <path>
local requests = {}
local next_request = 0

init = function(args)
  local folder, count, content_type, path = args[1], tonumber(args[2]), args[3], args[4]
  for i = 0, count - 1 do
    local file = assert(io.open(string.format("%s/%05d.body", folder, i), "rb"))
    requests[#requests + 1] = wrk.format("POST", path, { ["Content-Type"] = content_type }, file:read("*a"))
    file:close()
  end
end

request = function()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
