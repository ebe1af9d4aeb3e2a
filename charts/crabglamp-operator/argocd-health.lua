-- Argo CD health check for the crabglamp.com kinds Agent, PlainVM and VirtualKey (one script
-- for all three: they share the kstatus conventions). Install it in argocd-cm as
-- resource.customizations.health.crabglamp.com_<Kind> (see README.md beside this file).
--
-- Progressing: the operator has not reported on the current generation yet, says it is
--   Reconciling, or has no Ready condition yet.
-- Degraded:    Stalled=True (a permanent error that waits for a spec change or a raised
--   limit), or Ready=False for a reason that does not clear by itself (a VirtualKey over its
--   budget or past its expiry: the proxy refuses the key).
-- Healthy:     Ready=True for the current generation. A stopped Agent or PlainVM
--   (spec.running: false, powered off) is Ready and so Healthy, as kstatus sees it ("Current"):
--   Argo CD treats Suspended as still running during a sync, so a stopped server would hold up
--   every sync wave after it.
local hs = {}

-- Ready=False reasons that are an end state rather than a step on the way.
local terminal = { BudgetExceeded = true, Expired = true }

local function fail(status, message)
  hs.status = status
  hs.message = message
  return hs
end

if obj.status == nil then
  return fail("Progressing", "Waiting for the operator to report a status")
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  return fail("Progressing", "Waiting for the operator to observe generation " .. tostring(generation))
end

local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    conditions[condition.type] = condition
  end
end

local function describe(condition)
  local text = condition.reason or condition.type
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  return fail("Degraded", describe(stalled))
end

local ready = conditions["Ready"]
local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  return fail("Progressing", describe(ready or reconciling))
end
if ready == nil then
  return fail("Progressing", "Waiting for the Ready condition")
end
if ready.status == "True" then
  return fail("Healthy", describe(ready))
end
if ready.status == "False" and terminal[ready.reason] then
  return fail("Degraded", describe(ready))
end
return fail("Progressing", describe(ready))
