#include "audit/sink.h"

#include <vector>

namespace vaultp11::audit {

Record Record::From(const nlohmann::json& event) {
  Record r;
  r.json = event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (event.is_object()) {
    auto it = event.find("resultSignature");
    if (it != event.end() && it->is_string()) r.result_signature = it->get<std::string>();
  }
  return r;
}

Status Sink::Write(std::span<const nlohmann::json> events) {
  std::vector<Record> records;
  records.reserve(events.size());
  for (const nlohmann::json& e : events) {
    if (!e.is_object()) return Err(CKR_GENERAL_ERROR, "{}: an event is not a JSON object", Describe());
    records.push_back(Record::From(e));
  }
  return Write(std::span<const Record>(records));
}

}  // namespace vaultp11::audit
