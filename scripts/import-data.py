#!/usr/bin/env python3
"""Generate a large seed003-shaped (backend2) mongoexport dump for `switchboard import`.

    scripts/import-data.py --out DIR --users 10000 --conversations 50000 \
        --messages 1000000 [--seed 1]

writes DIR/users.json, conversations.json, messages.json, chatrequests.json,
contacts.json and sessions.json. Each file holds one MongoDB Extended JSON document per line,
as `mongoexport` writes them. users, messages and contacts are in relaxed mode
(`{"$date":"…Z"}`); conversations, chatrequests and sessions are in canonical mode
(`{"$date":{"$numberLong":"…"}}`, `{"$numberInt":"0"}`).

Shape, following tests/fixtures/import/seed003 (see its README):
  * conversations: 80 % direct (`participantKey`, unique pairs), 20 % groups of 3-20 members.
    Both naming styles are used (`participants` or `members`), and each conversation has
    `deliveredUpTo`/`readUpTo`.
  * messages: 10-200 characters of chat-like text (Russian and English), spread unevenly over
    the conversations (recently created conversations are busier). `createdAt` increases with
    jitter through the file. Both naming styles appear (`conversation`+`sender`+`text`, or
    `conversationId`+`from`+`to`+`content`), along with some image/file/audio messages with
    `mediaUrl`, `replyTo`, `clientMessageId`, and edited and soft-deleted messages.
  * every document maps: every reference points at an exported document, and there are no
    duplicates, no broken lines and no invalid text. An import should report 0 unmappable
    and 0 skipped documents.

The output is byte-for-byte deterministic for a given --seed and set of counts. Messages are
streamed: memory use depends on users + conversations, not on the number of messages.
Python 3 standard library only.
"""
import argparse
import bisect
import json
import os
import random
import sys
import time

MACHINE = "b17e5c0a93"  # 5 "machine" bytes in every generated ObjectId
T0_MS = 1748736000000  # 2025-06-01T00:00:00Z
DAY_MS = 86400000

FIRST = ["Ivan", "Anna", "Timur", "Elena", "Max", "Pavel", "Olga", "Dmitry", "Maria", "Sergey",
         "Natalia", "Alexei", "Irina", "Nikolai", "Ekaterina", "Artem", "Sofia", "Kirill", "Daria",
         "Roman", "Yulia", "Egor", "Polina", "Andrei", "Alina", "John", "Emily", "David", "Sarah",
         "Michael", "Laura", "Omar", "Leila", "Rustam", "Aigerim", "Иван", "Анна", "Мария",
         "Сергей", "Ольга", "Дмитрий", "Елена", "Павел", "Наталья", "Тимур", "Алексей"]
LAST = ["Kuznetsov", "Smirnova", "Alimov", "Popova", "Orlov", "Morozov", "Belova", "Ivanov",
        "Petrova", "Sokolov", "Lebedeva", "Kozlov", "Novikova", "Volkov", "Fedorova", "Zaitsev",
        "Pavlova", "Semenov", "Golubeva", "Vinogradov", "Smith", "Brown", "Karimov", "Nazarova",
        "Иванов", "Петрова", "Соколов", "Волкова", "Морозов", "Новикова", "Кузнецов"]
GROUP_NAMES = ["Weekend hiking", "Project Atlas", "Family", "Book club", "Football on Sundays",
               "Dev team", "QA", "Marketing", "Release 2.0", "Neighbours", "Class of 2015",
               "Поход выходного дня", "Семья", "Дача", "Работа", "Книжный клуб", "Футбол",
               "Родительский чат", "Отпуск 2025", "Ремонт", "Design review", "Support shift"]
EMOJI = ["🙂", "😂", "👍", "🎉", "🙏", "❤️", "🔥", "😅", "🤔", "👌", "🥾", "☕"]
EN = ["ok", "Sure", "Thanks!", "See you tomorrow", "I'm running late, sorry", "Traffic is terrible",
      "Can you check the build?", "The build is green again", "Send me the file when you have a minute",
      "The client asked for a discount", "Let's discuss it on Monday", "What about lunch?",
      "I think we should move the release to Friday", "Did you see the new design?",
      "Looks great, but the button is too small", "Where are we meeting this weekend?",
      "The weather looks good for hiking", "Bring some water and snacks", "Happy birthday!",
      "Have a nice day", "Thank you so much", "No problem, will do", "Done, just merged it",
      "The tests pass now", "Call me when you're free", "I'll be there in 10 minutes",
      "Can we move the meeting to 3 pm?", "Who is on call tonight?", "Just landed", "On my way",
      "Please review my PR when you get a chance", "Any news from the bank?", "Good morning everyone",
      "I left the keys at the reception", "Let me know if you need anything else"]
RU = ["Привет!", "Как дела?", "Всё хорошо, спасибо", "Увидимся завтра", "Опаздываю, извини",
      "Пробки ужасные", "Можешь проверить сборку?", "Сборка опять зелёная", "Пришли файл, когда будет минутка",
      "Клиент просил скидку", "Давай обсудим в понедельник", "Что насчёт обеда?",
      "Думаю, релиз нужно перенести на пятницу", "Видел новый дизайн?", "Выглядит отлично, но кнопка маленькая",
      "Где встречаемся в выходные?", "Погода хорошая для похода", "Возьми воду и перекус",
      "С днём рождения!", "Хорошего дня", "Большое спасибо", "Без проблем, сделаю", "Готово, смёрджил",
      "Тесты проходят", "Перезвони, когда освободишься", "Буду через 10 минут", "Можно перенести встречу на 15:00?",
      "Кто сегодня дежурит?", "Приземлился", "Выхожу", "Посмотри мой PR, пожалуйста", "Есть новости из банка?",
      "Всем доброе утро", "Оставил ключи на ресепшене", "Скажи, если ещё что-то нужно"]
B64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
UAS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "backend2-desktop/1.8.2 Chrome/120.0.6099.291 Electron/28.2.3 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "backend2-desktop/1.8.0 Chrome/120.0.6099.291 Electron/28.2.3 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "backend2-desktop/1.8.2 Chrome/120.0.6099.291 Electron/28.2.3 Safari/537.36",
    "Dart/3.2 (dart:io)",
    "Dart/3.3 (dart:io)",
]
DEVICES = ["iPhone 14", "iPhone 15 Pro", "Pixel 7", "Galaxy S23", "Redmi Note 12", "MacBook Pro",
           "ThinkPad X1", "home-desktop", "work-laptop"]


def js(s):
    return json.dumps(s, ensure_ascii=False)


class Clock:
    """Fast Extended JSON dates for millisecond timestamps (UTC)."""

    def __init__(self):
        self.days = {}

    def iso(self, ms):
        day, rem = divmod(ms, DAY_MS)
        d = self.days.get(day)
        if d is None:
            d = time.strftime("%Y-%m-%dT", time.gmtime(day * 86400))
            self.days[day] = d
        s, milli = divmod(rem, 1000)
        h, s = divmod(s, 3600)
        m, s = divmod(s, 60)
        return '{"$date":"%s%02d:%02d:%02d.%03dZ"}' % (d, h, m, s, milli)

    @staticmethod
    def canon(ms):
        return '{"$date":{"$numberLong":"%d"}}' % ms


class Oids:
    def __init__(self):
        self.counter = 0

    def new(self, ms):
        self.counter = (self.counter + 1) & 0xFFFFFF
        return "%08x%s%06x" % (ms // 1000, MACHINE, self.counter)


class Out:
    def __init__(self, path):
        self.f = open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20)
        self.buf = []
        self.n = 0

    def add(self, line):
        self.buf.append(line)
        if len(self.buf) >= 20000:
            self.flush()

    def flush(self):
        if self.buf:
            self.f.write("\n".join(self.buf))
            self.f.write("\n")
            self.n += len(self.buf)
            self.buf = []

    def close(self):
        self.flush()
        self.f.close()


def text_pool(rnd, n):
    """n distinct-ish chat texts of 10-200 characters, mostly short, pre-encoded as JSON."""
    pool = []
    for _ in range(n):
        phrases = RU if rnd.random() < 0.5 else EN
        target = 10 + int(190 * rnd.random() ** 2.2)
        s = rnd.choice(phrases)
        while len(s) < target:
            nxt = rnd.choice(phrases)
            if len(s) + 1 + len(nxt) > 200:
                break
            if s[-1] not in ".!?":
                s += "."
            s += " " + nxt
        if rnd.random() < 0.15 and len(s) <= 196:
            s += " " + rnd.choice(EMOJI)
        while len(s) < 10:
            s += " " + rnd.choice(EMOJI)
        pool.append(js(s[:200]))
    return pool


def bcrypt_like(rnd):
    return "$2b$%02d$%s" % (rnd.choice((10, 10, 12)), "".join(rnd.choice(B64) for _ in range(53)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--conversations", type=int, default=50000)
    ap.add_argument("--messages", type=int, default=1000000)
    ap.add_argument("--chat-requests", type=int, default=None,
                    help="default: conversations / 10")
    ap.add_argument("--contacts", type=int, default=None, help="default: 3 x users (repeats of an owner+number are dropped)")
    ap.add_argument("--sessions", type=int, default=None, help="default: 1.5 x users")
    ap.add_argument("--days", type=int, default=180, help="time span of the data (default 180)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.users < 2:
        ap.error("--users must be at least 2")
    if a.conversations < 1 or a.messages < 0 or a.days < 1:
        ap.error("--conversations must be >= 1, --messages >= 0, --days >= 1")
    n_req = a.conversations // 10 if a.chat_requests is None else a.chat_requests
    n_contacts = 3 * a.users if a.contacts is None else a.contacts
    n_sessions = (3 * a.users) // 2 if a.sessions is None else a.sessions

    started = time.time()
    os.makedirs(a.out, exist_ok=True)
    rnd = random.Random(a.seed)
    clock = Clock()
    oids = Oids()
    span = a.days * DAY_MS

    # ------------------------------------------------------------ users
    # created during the first 20 % of the span, in order
    U = a.users
    u_ms = sorted(T0_MS + int(rnd.random() * span * 0.2) for _ in range(U))
    u_id = []
    u_phone = []
    out = Out(os.path.join(a.out, "users.json"))
    for i in range(U):
        ms = u_ms[i]
        oid = oids.new(ms)
        u_id.append(oid)
        name = js("%s %s" % (rnd.choice(FIRST), rnd.choice(LAST)))
        digits = "79%09d" % (100000000 + i * 7919 % 900000000)  # unique per user
        r = rnd.random()
        if r < 0.01:
            phone = None  # neither phone nor email (desktop user)
        elif r < 0.70:
            phone = "+" + digits
        elif r < 0.85:
            phone = "+%s %s %s-%s-%s" % (digits[0], digits[1:4], digits[4:7], digits[7:9], digits[9:])
        else:
            phone = "+%s (%s) %s-%s-%s" % (digits[0], digits[1:4], digits[4:7], digits[7:9], digits[9:])
        u_phone.append(digits if phone else None)
        parts = ['{"_id":{"$oid":"%s"},"name":%s' % (oid, name)]
        if phone:
            parts.append(',"phone":"%s"' % phone)
        r = rnd.random()
        if r < 0.35:
            parts.append(',"avatar":"/uploads/avatars/%s.jpg"' % oid)
        elif r < 0.65:
            parts.append(',"avatarUrl":"https://files.backend2.app/avatars/%s.webp"' % oid)
        if rnd.random() < 0.6:
            parts.append(',"password":"%s"' % bcrypt_like(rnd))
        parts.append(',"createdAt":%s,"__v":0}' % clock.iso(ms))
        out.add("".join(parts))
    out.close()

    # ------------------------------------------------------------ conversations (in memory)
    # created between 2 % and 70 % of the span, after their members joined
    C = a.conversations
    max_pairs = U * (U - 1) // 2
    n_direct = min(int(C * 0.8 + 0.5), max_pairs)
    kinds = [True] * n_direct + [False] * (C - n_direct)  # True = direct
    rnd.shuffle(kinds)
    c_ms = sorted(T0_MS + int(span * (0.02 + 0.68 * rnd.random())) for _ in range(C))
    c_id = []
    c_members = []
    c_direct = kinds
    pairs = set()
    # users available at time t: bisect on u_ms
    for j in range(C):
        ms = c_ms[j]
        avail = max(2, bisect.bisect_right(u_ms, ms))
        if kinds[j]:
            while True:
                x = rnd.randrange(avail)
                y = rnd.randrange(avail)
                if x == y:
                    continue
                key = (x, y) if x < y else (y, x)
                if key in pairs:
                    if len(pairs) >= avail * (avail - 1) // 2:
                        avail = U  # everyone joined already in the worst case
                    continue
                pairs.add(key)
                break
            mem = [x, y]
        else:
            size = min(avail, 3 + int(17 * rnd.random() ** 2))
            if size < 3:
                size = min(U, 3)
                avail = U
            mem = rnd.sample(range(avail), size)
        c_members.append(mem)
        c_id.append(oids.new(ms))

    # ------------------------------------------------------------ messages (streamed)
    M = a.messages
    c_last = [0] * C  # last message time per conversation (0 = none)
    c_last_id = [None] * C
    pool = text_pool(rnd, 20000)
    npool = len(pool)
    out = Out(os.path.join(a.out, "messages.json"))
    msg_start = T0_MS + int(span * 0.02) + 1000
    msg_end = T0_MS + span
    gap = max(1.0, (msg_end - msg_start) / max(M, 1))
    t = float(msg_start)
    k = 0  # conversations created before t
    rand = rnd.random
    randrange = rnd.randrange
    getrandbits = rnd.getrandbits
    iso = clock.iso
    new_oid = oids.new
    n_a = n_b = 0
    for _ in range(M):
        t += gap * 2.0 * rand() + 1.0
        ms = int(t)
        while k < C and c_ms[k] < ms:
            k += 1
        if k == 0:
            # nothing exists yet: move time to the first conversation
            t = float(c_ms[0] + 1000)
            ms = int(t)
            k = 1
            while k < C and c_ms[k] < ms:
                k += 1
        r = rand()
        if r < 0.35:
            j = k - 1 - int(min(k, 300) * rand())  # recently created: busy
        else:
            j = int(k * rand())
        mem = c_members[j]
        si = mem[int(len(mem) * rand())]
        oid = new_oid(ms)
        cid = c_id[j]
        r = rand()
        if r < 0.92:
            typ = "text"
            media = None
        elif r < 0.96:
            typ = "image"
            media = "/uploads/%s/%s.jpg" % (iso(ms)[10:20].replace("-", "/"), oid)
        elif r < 0.98:
            typ = "file"
            media = "/uploads/%s/%s.pdf" % (iso(ms)[10:20].replace("-", "/"), oid)
        else:
            typ = "audio"
            media = "/uploads/%s/%s.ogg" % (iso(ms)[10:20].replace("-", "/"), oid)
        text = pool[randrange(npool)] if typ == "text" or rand() < 0.3 else '""'
        styleA = rand() < 0.5
        if styleA:
            n_a += 1
            s = '{"_id":{"$oid":"%s"},"conversation":{"$oid":"%s"},"sender":{"$oid":"%s"},"text":%s,"type":"%s"' % (
                oid, cid, u_id[si], text, typ)
        else:
            n_b += 1
            if c_direct[j]:
                other = mem[1] if mem[0] == si else mem[0]
                s = '{"_id":{"$oid":"%s"},"conversationId":{"$oid":"%s"},"from":{"$oid":"%s"},"to":{"$oid":"%s"},"content":%s,"type":"%s"' % (
                    oid, cid, u_id[si], u_id[other], text, typ)
            else:
                s = '{"_id":{"$oid":"%s"},"conversationId":{"$oid":"%s"},"from":{"$oid":"%s"},"content":%s,"type":"%s"' % (
                    oid, cid, u_id[si], text, typ)
        extra = []
        if media:
            extra.append(',"mediaUrl":"%s"' % media)
        prev = c_last_id[j]
        if prev is not None and rand() < 0.03:
            extra.append(',"replyTo":{"$oid":"%s"}' % prev)
        if not styleA and rand() < 0.9:
            h = "%032x" % getrandbits(128)
            extra.append(',"clientMessageId":"%s-%s-4%s-a%s-%s"' % (h[:8], h[8:12], h[13:16], h[17:20], h[20:]))
        created = iso(ms)
        updated = created
        r = rand()
        if r < 0.02:
            e = ms + 5000 + randrange(600000)
            updated = iso(e)
            extra.append(',"%s":true,"editedAt":%s' % ("edited" if styleA else "isEdited", updated))
        elif r < 0.03:
            e = ms + 2000 + randrange(300000)
            updated = iso(e)
            extra.append(',"%s":true,"deletedAt":%s' % ("deleted" if styleA else "isDeleted", updated))
        out.add('%s%s,"createdAt":%s,"updatedAt":%s,"__v":0}' % (s, "".join(extra), created, updated))
        c_last[j] = ms
        c_last_id[j] = oid
    out.close()
    del c_last_id, pool

    # ------------------------------------------------------------ conversations (written)
    canon = clock.canon
    out = Out(os.path.join(a.out, "conversations.json"))
    for j in range(C):
        mem = c_members[j]
        ms = c_ms[j]
        last = c_last[j]
        ids = [u_id[x] for x in mem]
        style = "participants" if rnd.random() < 0.5 else "members"
        arr = ",".join('{"$oid":"%s"}' % x for x in ids)
        parts = ['{"_id":{"$oid":"%s"},"type":"%s","%s":[%s]' % (c_id[j], "direct" if c_direct[j] else "group", style, arr)]
        if c_direct[j]:
            parts.append(',"participantKey":"%s"' % "_".join(sorted(ids)))
        else:
            parts.append(',"name":%s' % js(rnd.choice(GROUP_NAMES) + ("" if rnd.random() < 0.6 else " %d" % (2 + rnd.randrange(40)))))
        parts.append(',"createdBy":{"$oid":"%s"}' % ids[0])
        if last:
            dl = []
            rd = []
            for x in ids:
                dl.append('"%s":%s' % (x, canon(last)))
                lag = 0 if rnd.random() < 0.7 else rnd.randrange(1, 3 * DAY_MS)
                rd.append('"%s":%s' % (x, canon(max(ms, last - lag))))
            parts.append(',"deliveredUpTo":{%s},"readUpTo":{%s}' % (",".join(dl), ",".join(rd)))
        else:
            parts.append(',"deliveredUpTo":{},"readUpTo":{}')
        parts.append(',"createdAt":%s,"updatedAt":%s,"__v":{"$numberInt":"0"}}' % (canon(ms), canon(max(ms, last))))
        out.add("".join(parts))
    out.close()

    # ------------------------------------------------------------ chat requests
    # accepted ones belong to direct conversations; others are between users without one
    directs = [j for j in range(C) if c_direct[j]]
    out = Out(os.path.join(a.out, "chatrequests.json"))
    greetings = ["Hi, it's me from work", "Привет! Это я, добавь в контакты", "Hello, can we chat?",
                 "Привет, можно написать?", "Hi! We met at the conference"]
    rows = []
    n_acc = min(len(directs), int(n_req * 0.6 + 0.5))
    # at most one request per pair of users, and none for a pair that already has a direct
    # conversation unless that request is the accepted one that created it
    free_pairs = max_pairs - len(pairs)
    n_other = min(n_req - n_acc, free_pairs)
    for j in rnd.sample(directs, n_acc):
        x, y = c_members[j]
        if rnd.random() < 0.5:
            x, y = y, x
        ms = max(u_ms[x], u_ms[y], c_ms[j] - 1 - rnd.randrange(3 * 3600 * 1000))
        rows.append((ms, x, y, "accepted", c_id[j], c_ms[j]))
    for _ in range(n_other):
        while True:
            x = rnd.randrange(U)
            y = rnd.randrange(U - 1)
            if y >= x:
                y += 1
            key = (x, y) if x < y else (y, x)
            if key not in pairs:
                pairs.add(key)
                break
        base = max(u_ms[x], u_ms[y])
        ms = base + rnd.randrange(max(1, T0_MS + span - base))
        st = "pending" if rnd.random() < 0.62 else "rejected"
        rows.append((ms, x, y, st, None, ms + (0 if st == "pending" else 1000 + rnd.randrange(DAY_MS))))
    n_req = len(rows)
    rows.sort(key=lambda row: row[0])
    for ms, x, y, st, conv, upd in rows:
        parts = ['{"_id":{"$oid":"%s"},"from":{"$oid":"%s"},"to":{"$oid":"%s"},"status":"%s"' % (
            oids.new(ms), u_id[x], u_id[y], st)]
        if rnd.random() < 0.6:
            parts.append(',"message":%s' % js(rnd.choice(greetings)))
        if conv:
            parts.append(',"conversation":{"$oid":"%s"}' % conv)
        parts.append(',"createdAt":%s,"updatedAt":%s,"__v":{"$numberInt":"0"}}' % (canon(ms), canon(max(ms, upd))))
        out.add("".join(parts))
    out.close()
    del rows, directs, pairs

    # ------------------------------------------------------------ contacts
    out = Out(os.path.join(a.out, "contacts.json"))
    rows = sorted((u_ms[o] + rnd.randrange(DAY_MS), o) for o in (rnd.randrange(U) for _ in range(n_contacts)))
    seen = set()  # one contact per owner and number
    written = 0
    for ms, o in rows:
        other = rnd.randrange(U)
        digits = u_phone[other] if rnd.random() < 0.7 else None
        if digits is None:
            digits = "79%09d" % rnd.randrange(1000000000)
        if (o, digits) in seen:
            continue
        seen.add((o, digits))
        written += 1
        r = rnd.random()
        if r < 0.5:
            phone = "+" + digits
        elif r < 0.7:
            phone = "8" + digits[1:]
        elif r < 0.9:
            phone = "+%s %s %s-%s-%s" % (digits[0], digits[1:4], digits[4:7], digits[7:9], digits[9:])
        else:
            phone = "+%s-%s-%s-%s-%s" % (digits[0], digits[1:4], digits[4:7], digits[7:9], digits[9:])
        parts = ['{"_id":{"$oid":"%s"},"owner":{"$oid":"%s"},"phone":"%s"' % (oids.new(ms), u_id[o], phone)]
        if rnd.random() < 0.9:
            parts.append(',"name":%s' % js(rnd.choice(FIRST) + ("" if rnd.random() < 0.5 else " " + rnd.choice(LAST))))
        parts.append(',"createdAt":%s,"__v":0}' % clock.iso(ms))
        out.add("".join(parts))
    out.close()
    n_contacts = written
    del rows, seen

    # ------------------------------------------------------------ sessions
    out = Out(os.path.join(a.out, "sessions.json"))
    rows = sorted((u_ms[o] + rnd.randrange(2 * DAY_MS), o) for o in (rnd.randrange(U) for _ in range(n_sessions)))
    for ms, o in rows:
        ua = rnd.choice(UAS)
        mobile = ua.startswith("Dart")
        if rnd.random() < 0.8:
            ip = "%d.%d.%d.%d" % (rnd.choice((5, 31, 46, 77, 85, 95, 176, 178, 188, 212)), rnd.randrange(256), rnd.randrange(256), 1 + rnd.randrange(254))
        else:
            ip = "2a00:1fa0:%x:%x::%x" % (rnd.randrange(65536), rnd.randrange(65536), 1 + rnd.randrange(65535))
        parts = ['{"_id":{"$oid":"%s"},"userId":{"$oid":"%s"},"sessionId":"%032x"' % (oids.new(ms), u_id[o], rnd.getrandbits(128))]
        if rnd.random() < 0.85:
            parts.append(',"deviceName":%s' % js(rnd.choice(DEVICES[:5] if mobile else DEVICES[5:])))
        last = ms + rnd.randrange(max(1, T0_MS + span - ms))
        parts.append(',"userAgent":%s,"ip":"%s","isActive":%s,"createdAt":%s,"lastActiveAt":%s,"__v":{"$numberInt":"0"}}' % (
            js(ua), ip, "true" if rnd.random() < 0.75 else "false", canon(ms), canon(last)))
        out.add("".join(parts))
    out.close()

    took = time.time() - started
    size = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out) if f.endswith(".json"))
    print("wrote %s: users %d, conversations %d (%d direct, %d groups), messages %d (%d style A, %d style B), "
          "chatrequests %d, contacts %d, sessions %d; %.1f MB in %.1f s" % (
              a.out, U, C, n_direct, C - n_direct, M, n_a, n_b, n_req, n_contacts, n_sessions,
              size / 1e6, took), file=sys.stderr)


if __name__ == "__main__":
    main()
