"""A stand-in, in the browser, for the issue-18 class endpoints a station may not have yet
(/api/classes, rename, merge, delete, /api/undo, /api/token and the near-duplicate 409 of /api/learn),
answering exactly as /tmp/contract18.md says. Installed only when the real server lacks them: the page's
flows then run against the real server for teaching and against this for the class operations."""

import json
from email.parser import BytesParser
from email.policy import HTTP


def form_fields(request) -> dict[str, list]:
    """The multipart form a browser request sends: field name -> values (file fields: their file names)."""
    body = request.post_data_buffer or b""
    head = f"Content-Type: {request.headers.get('content-type', 'text/plain')}\r\n\r\n".encode()
    fields: dict[str, list] = {}
    for part in BytesParser(policy=HTTP).parsebytes(head + body).iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields.setdefault(name, []).append(part.get_filename() or part.get_content())
    return fields


def key(name: str) -> str:
    return " ".join(name.split()).casefold()


class ContractFake:
    """Classes and their example counts as the contract's endpoints would report them."""

    def __init__(self, server):
        self.server, self.counts, self.taught, self.version = server, {}, [], 100
        self.requests: list[tuple[str, dict]] = []

    def missing(self, path: str) -> bool:
        """A GET of a POST-only route answers 405: 404 means the station has no such route."""
        return self.server.client.get(path, headers=self.server.auth()).status_code == 404

    def install(self, page) -> "ContractFake":
        """Fakes what the station lacks; ``self.classes`` / ``self.tokens``: whether it did."""
        self.classes, self.tokens = self.missing("/api/classes"), self.missing("/api/token")
        if self.classes:
            page.route("**/api/classes", lambda route: self.answer(route, {"classes": self.cards()}))
            page.route("**/api/classes/*", self.class_operation)
            page.route("**/api/undo", self.undo)
            page.route("**/api/learn", self.learn)
        if self.tokens:
            page.route("**/api/token", self.token)
        return self

    @staticmethod
    def answer(route, body: dict, status: int = 200) -> None:
        route.fulfill(status=status, content_type="application/json", body=json.dumps(body))

    def cards(self) -> list[dict]:
        return [{"name": n, "examples": c, "thumbnails": [], "few": c < 5} for n, c in self.counts.items()]

    def changed(self, route) -> None:
        self.version += 1
        self.answer(route, {"version": self.version, "classes": list(self.counts)})

    def learn(self, route) -> None:
        fields = form_fields(route.request)
        self.requests.append(("learn", fields))
        label = (fields.get("label") or [""])[0].strip()
        same = [n for n in self.counts if key(n) == key(label) and n != label]
        if same and fields.get("new_class") != ["true"]:
            return self.answer(route, {"detail": f"did you mean '{same[0]}'?", "suggestion": same[0]}, 409)
        if label:  # the real station learns it (continue_: route.fetch would mangle the binary files)
            n = len(fields.get("files", []))
            self.counts[label] = self.counts.get(label, 0) + n
            self.taught.append((label, n, (fields.get("kind") or ["teach"])[0]))
        route.continue_()

    def class_operation(self, route) -> None:
        fields = {k: v[0] for k, v in form_fields(route.request).items()}
        operation = route.request.url.rsplit("/", 1)[1]
        self.requests.append((operation, fields))
        name = fields["name"]
        if name not in self.counts:
            return self.answer(route, {"detail": f"there is no class '{name}'"}, 404)
        if operation == "rename":
            if fields["to"] in self.counts:
                return self.answer(route, {"detail": f"'{fields['to']}' already exists: merge into it"}, 409)
            self.counts = {fields["to"] if n == name else n: c for n, c in self.counts.items()}
        elif operation == "merge":
            self.counts[fields["into"]] += self.counts.pop(name)
        else:
            del self.counts[name]
        self.changed(route)

    def undo(self, route) -> None:
        if not self.taught:
            return self.answer(route, {"detail": "nothing to undo"}, 409)
        label, n, kind = self.taught.pop()
        self.counts[label] -= n
        if not self.counts[label]:
            del self.counts[label]
        self.version += 1
        self.answer(route, {"undone": {"kind": kind, "label": label, "examples": n, "user": "e2e"},
                            "version": self.version, "classes": list(self.counts)})

    def token(self, route) -> None:
        given = route.request.headers.get("authorization", "").removeprefix("Bearer ")
        self.answer(route, {"access": "write" if given == self.server.token else "none"})
