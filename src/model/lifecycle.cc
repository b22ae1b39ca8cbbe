#include "model/lifecycle.h"

#include <chrono>
#include <set>
#include <string_view>

#include <nlohmann/json.hpp>

namespace vaultp11::model {

namespace {

using Json = nlohmann::json;

bool IsDateEmpty(std::span<const uint8_t> date) {
  if (date.empty()) return true;
  for (uint8_t c : date)
    if (c != '0') return false;
  return true;
}

// Unicode code points of valid UTF-8 (every byte that does not continue a sequence).
size_t CodePoints(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80;
  return n;
}

// The seconds form of one side of the window from `tmpl`: the vendor attribute `secs_attr`,
// the CK_DATE `date_attr` (0: none, secrets), or `current` when the template names neither.
// `end` chooses how a date alone maps: its 23:59:59Z (end) or 00:00:00Z (start).
Result<CK_ULONG> ResolveSide(const AttributeMap& tmpl, CK_ATTRIBUTE_TYPE secs_attr, CK_ATTRIBUTE_TYPE date_attr,
                             CK_ULONG current, bool end) {
  std::optional<CK_ULONG> secs;
  if (tmpl.Has(secs_attr)) {
    secs = tmpl.GetUlong(secs_attr);
    if (!secs)
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: CK_ULONG must be {} bytes", AttrName(secs_attr), sizeof(CK_ULONG));
    if (*secs > kMaxUnixTime)
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: {} is after 9999-12-31T23:59:59Z", AttrName(secs_attr), *secs);
  }
  std::optional<std::optional<int64_t>> day;
  if (date_attr != 0 && tmpl.Has(date_attr)) {
    VAULTP11_ASSIGN_OR_RETURN(std::optional<int64_t> d, ParseDate(*tmpl.Get(date_attr), date_attr));
    // A start date of 1970-01-01 constrains nothing: the same as none (NOT_BEFORE 0).
    if (!end && d && *d == 0) d.reset();
    day = d;
  }
  if (secs && day) {
    const bool agree = *secs == 0 ? !day->has_value()
                                  : day->has_value() && static_cast<int64_t>(*secs / kSecondsPerDay) == **day;
    if (!agree)
      return Err(CKR_TEMPLATE_INCONSISTENT, "{} {} does not match {} {} (the date must be the UTC day of the time)",
                 AttrName(date_attr), day->has_value() ? FormatUnixTime(**day * kSecondsPerDay).substr(0, 10) : "empty",
                 AttrName(secs_attr), *secs == 0 ? std::string("0 (not set)") : FormatUnixTime(*secs));
    return *secs;
  }
  if (secs) return *secs;
  if (day) {
    if (!day->has_value()) return CK_ULONG{0};
    // The same day as stored keeps the exact second (a consumer writing back what it read).
    if (current != 0 && static_cast<int64_t>(current / kSecondsPerDay) == **day) return current;
    return static_cast<CK_ULONG>(**day * kSecondsPerDay + (end ? kSecondsPerDay - 1 : 0));
  }
  return current;
}

}  // namespace

bool IsLifecycleAttribute(CK_ATTRIBUTE_TYPE t) {
  return t == CKA_VAULTP11_ENABLED || t == CKA_VAULTP11_NOT_BEFORE || t == CKA_VAULTP11_EXPIRES ||
         t == CKA_VAULTP11_TAGS || t == CKA_START_DATE || t == CKA_END_DATE;
}

Result<std::optional<int64_t>> ParseDate(std::span<const uint8_t> date, CK_ATTRIBUTE_TYPE t) {
  if (IsDateEmpty(date)) return std::optional<int64_t>{};
  if (date.size() != 8) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: CK_DATE must be 0 or 8 bytes", AttrName(t));
  int v[8];
  for (size_t i = 0; i < 8; ++i) {
    if (date[i] < '0' || date[i] > '9') return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: CK_DATE must be digits", AttrName(t));
    v[i] = date[i] - '0';
  }
  const int y = v[0] * 1000 + v[1] * 100 + v[2] * 10 + v[3];
  const unsigned m = static_cast<unsigned>(v[4] * 10 + v[5]);
  const unsigned d = static_cast<unsigned>(v[6] * 10 + v[7]);
  const std::chrono::year_month_day ymd{std::chrono::year{y}, std::chrono::month{m}, std::chrono::day{d}};
  if (y < 1970 || !ymd.ok())
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: {:04}-{:02}-{:02} is not a day between 1970 and 9999", AttrName(t), y,
               m, d);
  return std::optional<int64_t>(std::chrono::sys_days(ymd).time_since_epoch().count());
}

Bytes DateOfDay(int64_t days) {
  const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{days}}};
  std::string s = fmt::format("{:04}{:02}{:02}", static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
                              static_cast<unsigned>(ymd.day()));
  return Bytes(s.begin(), s.end());
}

std::string FormatUnixTime(int64_t secs) {
  int64_t days = secs / kSecondsPerDay, rem = secs % kSecondsPerDay;
  if (rem < 0) {
    rem += kSecondsPerDay;
    --days;
  }
  const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{days}}};
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", static_cast<int>(ymd.year()),
                     static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()), rem / 3600, rem / 60 % 60,
                     rem % 60);
}

Window CurrentWindow(const AttributeMap& attrs, bool has_dates) {
  Window w;
  auto side = [&](CK_ATTRIBUTE_TYPE secs_attr, CK_ATTRIBUTE_TYPE date_attr, bool end) -> CK_ULONG {
    if (auto v = attrs.GetUlong(secs_attr)) return *v;
    if (!has_dates) return 0;
    const Bytes* date = attrs.Get(date_attr);
    if (date == nullptr) return 0;
    auto day = ParseDate(*date, date_attr);
    if (!day.ok() || !day.value()) return 0;
    return static_cast<CK_ULONG>(*day.value() * kSecondsPerDay + (end ? kSecondsPerDay - 1 : 0));
  };
  w.not_before = side(CKA_VAULTP11_NOT_BEFORE, CKA_START_DATE, false);
  w.expires = side(CKA_VAULTP11_EXPIRES, CKA_END_DATE, true);
  return w;
}

Result<Bytes> CanonicalTags(std::span<const uint8_t> json) {
  if (json.empty()) return Bytes{'{', '}'};
  try {
    bool duplicate = false, nested = false;
    std::set<std::string> names;
    Json::parser_callback_t cb = [&](int depth, Json::parse_event_t event, Json& parsed) {
      switch (event) {
        case Json::parse_event_t::object_start:
        case Json::parse_event_t::array_start:
          // Tags are one flat object: anything opened inside it is refused (and discarded).
          if (depth > 0) {
            nested = true;
            return false;
          }
          break;
        case Json::parse_event_t::key:
          if (depth == 1) {
            const auto* key = parsed.get_ptr<const std::string*>();
            if (key != nullptr && !names.insert(*key).second) duplicate = true;
          }
          break;
        default:
          break;
      }
      return true;
    };
    Json j = Json::parse(json.begin(), json.end(), cb, /*allow_exceptions=*/false);
    if (j.is_discarded()) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_TAGS is not valid UTF-8 JSON");
    if (!j.is_object()) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_TAGS is not a JSON object");
    if (nested) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_TAGS: tag values are strings, not objects or arrays");
    if (duplicate) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_TAGS has a tag name twice");
    if (j.size() > VAULTP11_MAX_TAGS)
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_TAGS has {} tags, at most {} are allowed", j.size(),
                 VAULTP11_MAX_TAGS);
    for (const auto& [name, value] : j.items()) {
      if (!value.is_string())
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_TAGS: the value of a tag is not a string");
      const size_t n = CodePoints(name);
      if (n == 0 || n > VAULTP11_MAX_TAG_CHARS)
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_TAGS: a tag name has {} characters (1 to {})", n,
                   VAULTP11_MAX_TAG_CHARS);
      const size_t vn = CodePoints(value.get_ref<const std::string&>());
      if (vn > VAULTP11_MAX_TAG_CHARS)
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_TAGS: a tag value has {} characters (at most {})", vn,
                   VAULTP11_MAX_TAG_CHARS);
    }
    std::string out = j.dump();
    return Bytes(out.begin(), out.end());
  } catch (const std::bad_alloc&) {
    return Err(CKR_HOST_MEMORY, "CKA_VAULTP11_TAGS: out of memory");
  } catch (...) {
    // nlohmann's messages may quote the input: never used.
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_TAGS is not valid UTF-8 JSON");
  }
}

Status ApplyLifecycle(CK_OBJECT_CLASS cls, const AttributeMap& tmpl, const AttributeMap& current, AttributeMap& out) {
  const bool has_dates = cls != CKO_DATA;
  if (tmpl.Has(CKA_VAULTP11_ENABLED)) {
    const Bytes* v = tmpl.Get(CKA_VAULTP11_ENABLED);
    if (v->size() != 1) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_ENABLED: CK_BBOOL must be 1 byte");
    out.SetBool(CKA_VAULTP11_ENABLED, (*v)[0] != CK_FALSE);
  } else {
    out.SetBool(CKA_VAULTP11_ENABLED, current.GetBool(CKA_VAULTP11_ENABLED, true));
  }
  if (tmpl.Has(CKA_VAULTP11_TAGS)) {
    VAULTP11_ASSIGN_OR_RETURN(Bytes tags, CanonicalTags(*tmpl.Get(CKA_VAULTP11_TAGS)));
    out.Set(CKA_VAULTP11_TAGS, std::move(tags));
  } else {
    const Bytes* have = current.Get(CKA_VAULTP11_TAGS);
    out.Set(CKA_VAULTP11_TAGS, have ? *have : Bytes{'{', '}'});
  }
  const Window cur = CurrentWindow(current, has_dates);
  VAULTP11_ASSIGN_OR_RETURN(CK_ULONG nbf, ResolveSide(tmpl, CKA_VAULTP11_NOT_BEFORE, has_dates ? CKA_START_DATE : 0,
                                                      cur.not_before, false));
  VAULTP11_ASSIGN_OR_RETURN(CK_ULONG exp, ResolveSide(tmpl, CKA_VAULTP11_EXPIRES, has_dates ? CKA_END_DATE : 0,
                                                      cur.expires, true));
  if (nbf != 0 && exp != 0 && nbf > exp)
    return Err(CKR_TEMPLATE_INCONSISTENT, "not before {} is after the expiry {}", FormatUnixTime(nbf),
               FormatUnixTime(exp));
  out.SetUlong(CKA_VAULTP11_NOT_BEFORE, nbf);
  out.SetUlong(CKA_VAULTP11_EXPIRES, exp);
  if (has_dates) {
    out.Set(CKA_START_DATE, nbf != 0 ? DateOfDay(static_cast<int64_t>(nbf / kSecondsPerDay)) : Bytes{});
    out.Set(CKA_END_DATE, exp != 0 ? DateOfDay(static_cast<int64_t>(exp / kSecondsPerDay)) : Bytes{});
  }
  return OkStatus();
}

std::optional<Bytes> LifecycleDefault(CK_OBJECT_CLASS cls, const AttributeMap& attrs, CK_ATTRIBUTE_TYPE t) {
  if (cls != CKO_DATA && cls != CKO_PRIVATE_KEY && cls != CKO_PUBLIC_KEY && cls != CKO_SECRET_KEY) return std::nullopt;
  AttributeMap m;
  switch (t) {
    case CKA_VAULTP11_ENABLED:
      return Bytes{CK_TRUE};
    case CKA_VAULTP11_TAGS:
      return Bytes{'{', '}'};
    case CKA_VAULTP11_NOT_BEFORE:
      m.SetUlong(t, CurrentWindow(attrs, cls != CKO_DATA).not_before);
      return *m.Get(t);
    case CKA_VAULTP11_EXPIRES:
      m.SetUlong(t, CurrentWindow(attrs, cls != CKO_DATA).expires);
      return *m.Get(t);
    default:
      return std::nullopt;
  }
}

Status CheckKeyLifecycle(const AttributeMap& attrs, bool protecting, int64_t now) {
  // Every operation passes here: nothing is formatted unless the use is refused.
  auto name = [&attrs] {
    const std::string label = attrs.GetString(CKA_LABEL);
    return label.empty() ? std::string("key (no label)") : fmt::format("key '{}'", label);
  };
  if (!attrs.GetBool(CKA_VAULTP11_ENABLED, true))
    return Err(CKR_KEY_FUNCTION_NOT_PERMITTED, "{} is disabled (CKA_VAULTP11_ENABLED false): every use is refused",
               name());
  if (!protecting) return OkStatus();
  const Window w = CurrentWindow(attrs, true);
  if (w.not_before != 0 && now < static_cast<int64_t>(w.not_before))
    return Err(CKR_KEY_FUNCTION_NOT_PERMITTED,
               "{} is not valid before {}: until then it may only verify, decrypt and unwrap", name(),
               FormatUnixTime(w.not_before));
  if (w.expires != 0 && now > static_cast<int64_t>(w.expires))
    return Err(CKR_KEY_FUNCTION_NOT_PERMITTED, "{} expired at {}: it may still verify, decrypt and unwrap", name(),
               FormatUnixTime(w.expires));
  return OkStatus();
}

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace vaultp11::model
