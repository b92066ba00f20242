-- atom.pb: protobuf types for atom.grpc (SPEC §9 "Types"). A registry turns
-- FileDescriptorProtos into the C codec's pool (src/pb.c): messages and
-- enums by full name, methods by "pkg.Service/Method". descriptor.proto
-- itself is bootstrapped: the few messages and fields needed to read a
-- FileDescriptorSet (and the reflection protocol's messages) are declared
-- here by hand, with field numbers from google/protobuf/descriptor.proto and
-- grpc/reflection/v1/reflection.proto, and decoded by the same codec.
local _atom = require "_atom"

local M = {}

local TYPES = {
  double = 1, float = 2, int64 = 3, uint64 = 4, int32 = 5, fixed64 = 6, fixed32 = 7, bool = 8,
  string = 9, group = 10, message = 11, bytes = 12, uint32 = 13, enum = 14, sfixed32 = 15,
  sfixed64 = 16, sint32 = 17, sint64 = 18,
}
M.TYPES = TYPES
local LABEL_REPEATED = 3

-- {==== the bootstrap pool ====

-- name -> { {field, number, type, message-or-nil, flags} }; flags: r = repeated,
-- o = in a oneof of its own (so "absent" stays nil: proto2 presence).
local BOOT = {
  FileDescriptorSet = { { "file", 1, "message", "FileDescriptorProto", "r" } },
  FileDescriptorProto = {
    { "name", 1, "string" }, { "package", 2, "string" }, { "dependency", 3, "string", nil, "r" },
    { "message_type", 4, "message", "DescriptorProto", "r" },
    { "enum_type", 5, "message", "EnumDescriptorProto", "r" },
    { "service", 6, "message", "ServiceDescriptorProto", "r" }, { "syntax", 12, "string" },
  },
  DescriptorProto = {
    { "name", 1, "string" }, { "field", 2, "message", "FieldDescriptorProto", "r" },
    { "nested_type", 3, "message", "DescriptorProto", "r" },
    { "enum_type", 4, "message", "EnumDescriptorProto", "r" },
    { "options", 7, "message", "MessageOptions" },
    { "oneof_decl", 8, "message", "OneofDescriptorProto", "r" },
  },
  MessageOptions = { { "map_entry", 7, "bool" } },
  FieldDescriptorProto = {
    { "name", 1, "string" }, { "number", 3, "int32" }, { "label", 4, "int32" },
    { "type", 5, "int32" }, { "type_name", 6, "string" }, { "default_value", 7, "string", nil, "o" },
    { "options", 8, "message", "FieldOptions" }, { "oneof_index", 9, "int32", nil, "o" },
    { "proto3_optional", 17, "bool" },
  },
  FieldOptions = { { "packed", 2, "bool", nil, "o" } },
  OneofDescriptorProto = { { "name", 1, "string" } },
  EnumDescriptorProto = { { "name", 1, "string" }, { "value", 2, "message", "EnumValueDescriptorProto", "r" } },
  EnumValueDescriptorProto = { { "name", 1, "string" }, { "number", 2, "int32" } },
  ServiceDescriptorProto = { { "name", 1, "string" }, { "method", 2, "message", "MethodDescriptorProto", "r" } },
  MethodDescriptorProto = {
    { "name", 1, "string" }, { "input_type", 2, "string" }, { "output_type", 3, "string" },
    { "client_streaming", 5, "bool" }, { "server_streaming", 6, "bool" },
  },
  -- grpc.reflection.v1 (v1alpha has the same messages and numbers)
  ServerReflectionRequest = {
    { "host", 1, "string" }, { "file_by_filename", 3, "string", nil, "1" },
    { "file_containing_symbol", 4, "string", nil, "1" }, { "list_services", 7, "string", nil, "1" },
  },
  ServerReflectionResponse = {
    { "valid_host", 1, "string" },
    { "file_descriptor_response", 4, "message", "FileDescriptorResponse", "1" },
    { "list_services_response", 6, "message", "ListServiceResponse", "1" },
    { "error_response", 7, "message", "ErrorResponse", "1" },
  },
  FileDescriptorResponse = { { "file_descriptor_proto", 1, "bytes", nil, "r" } },
  ListServiceResponse = { { "service", 1, "message", "ServiceResponse", "r" } },
  ServiceResponse = { { "name", 1, "string" } },
  ErrorResponse = { { "error_code", 1, "int32" }, { "error_message", 2, "string" } },
}

local boot
--- The bootstrap pool: {pool =, idx = {name -> index}}.
function M.boot()
  if boot then return boot end
  local pool, idx = _atom.pb_pool(), {}
  for name in pairs(BOOT) do idx[name] = pool:message(name) end
  for name, fields in pairs(BOOT) do
    local list, noneofs = {}, 0
    local shared = nil -- the oneof of fields flagged "1"
    for _, f in ipairs(fields) do
      local flags = f[5] or ""
      local oneof
      if flags == "o" then
        noneofs = noneofs + 1
        oneof = noneofs
      elseif flags == "1" then
        if not shared then noneofs = noneofs + 1; shared = noneofs end
        oneof = shared
      end
      list[#list + 1] = { name = f[1], number = f[2], type = TYPES[f[3]], sub = f[4] and idx[f[4]],
                          repeated = flags == "r", oneof = oneof }
    end
    pool:fields(idx[name], list, noneofs)
  end
  boot = { pool = pool, idx = idx }
  return boot
end

-- }====

-- {==== a registry of loaded types ====

local Registry = {}
Registry.__index = Registry

--- A new, empty registry (one per scenario file state in atom.grpc).
function M.registry()
  return setmetatable({ pool = _atom.pb_pool(), types = {}, enums = {}, files = {}, methods = {},
    map_entry = {} },
    Registry)
end

local function strip(name) return (name:gsub("^%.", "")) end

-- A proto2 default_value string as the field's Lua value.
local function parse_default(f, s, enum_numbers)
  local t = f.type
  if t == TYPES.string then return s end
  if t == TYPES.bytes then
    return (s:gsub("\\(%d%d?%d?)", function(o) return string.char(tonumber(o, 8)) end)
      :gsub("\\(.)", { n = "\n", r = "\r", t = "\t", ["\\"] = "\\", ["'"] = "'", ['"'] = '"' }))
  end
  if t == TYPES.bool then return s == "true" end
  if t == TYPES.enum then return enum_numbers and enum_numbers[s] end
  if t == TYPES.double or t == TYPES.float then
    if s == "inf" then return math.huge elseif s == "-inf" then return -math.huge
    elseif s == "nan" then return 0 / 0 end
    return tonumber(s) + 0.0
  end
  return math.tointeger(tonumber(s))
end

--- Add decoded FileDescriptorProtos (tables); files already loaded are
--- skipped. Raises a plain message string when a type cannot be resolved.
---@param files table[]
function Registry:add_files(files)
  local pool, types, enums = self.pool, self.types, self.enums
  local new_msgs, map_entry, enum_vals = {}, self.map_entry, {}
  local fresh = {}
  for _, fd in ipairs(files) do
    if not self.files[fd.name] then
      self.files[fd.name] = true
      fresh[#fresh + 1] = fd
    end
  end
  -- 1. declare every message and enum, so that fields may refer to any
  local function declare_enum(e, full)
    if enums[full] then return end
    local names, numbers, byname = {}, {}, {}
    for i, v in ipairs(e.value) do names[i], numbers[i], byname[v.name] = v.name, v.number, v.number end
    if #names == 0 then names[1], numbers[1] = "UNSPECIFIED", 0 end
    enums[full] = pool:enum(full, names, numbers)
    enum_vals[full] = byname
  end
  local function declare_msg(d, full, proto3)
    if types[full] then return end
    types[full] = pool:message(full)
    new_msgs[#new_msgs + 1] = { d = d, full = full, proto3 = proto3 }
    if d.options and d.options.map_entry then map_entry[full] = true end
    for _, n in ipairs(d.nested_type) do declare_msg(n, full .. "." .. n.name, proto3) end
    for _, e in ipairs(d.enum_type) do declare_enum(e, full .. "." .. e.name) end
  end
  for _, fd in ipairs(fresh) do
    local prefix = fd.package ~= "" and (fd.package .. ".") or ""
    local proto3 = fd.syntax == "proto3"
    for _, d in ipairs(fd.message_type) do declare_msg(d, prefix .. d.name, proto3) end
    for _, e in ipairs(fd.enum_type) do declare_enum(e, prefix .. e.name) end
  end
  -- 2. their fields
  for _, nm in ipairs(new_msgs) do
    local list = {}
    for _, f in ipairs(nm.d.field) do
      local repeated = f.label == LABEL_REPEATED
      local sub, tname = nil, f.type_name ~= "" and strip(f.type_name) or nil
      if f.type == TYPES.message or f.type == TYPES.group then
        sub = types[tname]
      elseif f.type == TYPES.enum then
        sub = enums[tname]
      end
      if tname and not sub then
        error(("type %s of field %s.%s is not loaded"):format(tname, nm.full, f.name), 0)
      end
      local packable = f.type ~= TYPES.string and f.type ~= TYPES.bytes and f.type ~= TYPES.message
        and f.type ~= TYPES.group
      local packed
      if f.options and f.options.packed ~= nil then packed = f.options.packed
      else packed = nm.proto3 and repeated and packable end
      local oneof = f.oneof_index and f.oneof_index + 1 or nil
      local field = {
        name = f.name, number = f.number, type = f.type, sub = sub, repeated = repeated,
        packed = packed and packable, oneof = oneof,
        map = repeated and f.type == TYPES.message and map_entry[tname] or false,
        implicit = nm.proto3 and not repeated and oneof == nil and f.type ~= TYPES.message
          and not f.proto3_optional,
      }
      if f.default_value then field.default = parse_default(f, f.default_value, enum_vals[tname]) end
      list[#list + 1] = field
    end
    pool:fields(types[nm.full], list, #nm.d.oneof_decl)
  end
  -- 3. methods
  for _, fd in ipairs(fresh) do
    local prefix = fd.package ~= "" and (fd.package .. ".") or ""
    for _, s in ipairs(fd.service) do
      for _, m in ipairs(s.method) do
        local key = prefix .. s.name .. "/" .. m.name
        local input, output = types[strip(m.input_type)], types[strip(m.output_type)]
        if not input or not output then
          error(("types of method %s are not loaded"):format(key), 0)
        end
        self.methods[key] = { name = key, input = input, output = output, desc = "grpc " .. key,
          client_streaming = m.client_streaming, server_streaming = m.server_streaming }
      end
    end
  end
end

--- Add a serialized FileDescriptorSet.
function Registry:add_set(bytes)
  local b = M.boot()
  local ok, set = pcall(b.pool.decode, b.pool, b.idx.FileDescriptorSet, bytes)
  if not ok then error("not a FileDescriptorSet: " .. tostring(set), 0) end
  self:add_files(set.file)
end

--- Decode serialized FileDescriptorProtos (reflection answers).
function M.decode_files(list)
  local b = M.boot()
  local out = {}
  for i, bytes in ipairs(list) do out[i] = b.pool:decode(b.idx.FileDescriptorProto, bytes) end
  return out
end

-- }====

return M
