import Foundation

/// QMP's wire format, shared by the async client and the blocking connection.
enum QMPWire {
    /// One message from QEMU.
    enum Message {
        case greeting(JSONValue)
        case event(QMPEvent)
        /// A reply; `id` is nil for an error QEMU could not attach to a request.
        case reply(id: Int64?, Result<JSONValue, QMPError>)
    }

    /// A command line: `{"execute":…,"arguments":…,"id":N}` and a newline.
    static func encode(_ command: String, arguments: JSONValue?, id: UInt64) -> String {
        var message = "{\"execute\":" + JSONValue.quote(command)
        if let arguments { message += ",\"arguments\":" + arguments.description }
        return message + ",\"id\":\(id)}\n"
    }

    /// Decodes one line (without its newline); nil for anything QMP does not send.
    static func decode(_ line: ArraySlice<UInt8>, _ decoder: JSONDecoder) -> Message? {
        guard let msg = try? decoder.decode(JSONValue.self, from: Data(line)), case .object(let obj) = msg else {
            return nil
        }
        if let event = obj["event"]?.stringValue {
            var ts = 0.0
            if let t = obj["timestamp"], let s = t["seconds"]?.int64Value, let us = t["microseconds"]?.int64Value {
                ts = Double(s) + Double(us) / 1e6
            }
            return .event(QMPEvent(name: event, data: obj["data"] ?? .object([:]), timestamp: ts))
        }
        if obj["QMP"] != nil { return .greeting(msg) }
        let id = obj["id"]?.int64Value
        if let ret = obj["return"] { return .reply(id: id, .success(ret)) }
        if let e = obj["error"] {
            return .reply(id: id, .failure(.execute(command: "", errorClass: e["class"]?.stringValue ?? "GenericError",
                                                    description: e["desc"]?.stringValue ?? e.description)))
        }
        return nil
    }

    /// Splits complete lines off `buffer` (CRLF or LF), leaving a partial line in it.
    static func takeLines(_ buffer: inout [UInt8], scanned: inout Int, _ each: (ArraySlice<UInt8>) -> Void) {
        var lineStart = 0
        while let nl = buffer[scanned...].firstIndex(of: 10) {
            var end = nl
            if end > lineStart, buffer[end - 1] == 13 { end -= 1 }
            if end > lineStart { each(buffer[lineStart..<end]) }
            lineStart = nl + 1
            scanned = lineStart
        }
        if lineStart > 0 { buffer.removeFirst(lineStart) }
        scanned = buffer.count
    }
}

extension QMPError {
    /// The same error, naming the command it answered.
    func naming(_ command: String) -> QMPError {
        if case .execute(_, let cls, let desc) = self { return .execute(command: command, errorClass: cls, description: desc) }
        return self
    }
}
