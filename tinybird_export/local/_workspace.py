"""The workspace and token routes. There is one workspace: those that clients create
(``tb --local`` makes one per project, tinybird-sdk one per directory) are names for it, and
every token the server hands out is its one token: a token created by name (Classic ``tb push``
of a ``.datasource`` file with a ``TOKEN "name" APPEND`` line) is a name for it too, listed
with the admin scope it really has.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from typing import Any

from tinybird_export.local._api import USER_EMAIL, WORKSPACE, Handler, State
from tinybird_export.local._request import Request, Response


def workspace_id(name: str) -> str:
    """A stable id for a workspace name."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


_WORKSPACE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_WORKSPACES_MAX = 1000


def _workspace(state: State, request: Request, args: dict[str, str]) -> Response:
    return Response.json(
        200,
        {
            "id": workspace_id(WORKSPACE),
            "name": WORKSPACE,
            "user_email": USER_EMAIL,
            "user_id": workspace_id(USER_EMAIL),
            "scope": "admin",
            "role": "admin",
            "plan": "dev",
            "is_branch": False,
            "main": None,
            "releases": [],
        },
    )


def _user_workspaces(state: State, request: Request, args: dict[str, str]) -> Response:
    if args.get("version") == "v1":
        # tinybird-sdk builds LocalWorkspace(**entry): exactly id, name and token.
        entries: list[dict[str, Any]] = [
            {"id": workspace_id(n), "name": n, "token": state.token} for n in state.workspaces
        ]
        return Response.json(200, {"organization_id": None, "workspaces": entries})
    entries = [
        {"id": workspace_id(n), "name": n, "role": "admin", "plan": "dev", "is_branch": False}
        for n in state.workspaces
    ]
    return Response.json(
        200, {"id": workspace_id(USER_EMAIL), "email": USER_EMAIL, "workspaces": entries}
    )


def _create_workspace(state: State, request: Request, args: dict[str, str]) -> Response:
    name = request.form().get("name") or ""
    if not _WORKSPACE_NAME.match(name):
        return Response.error(
            400, f"invalid workspace name {name[:140]!r}: at most 128 letters, digits and _"
        )
    with state.lock:
        if name not in state.workspaces:
            # Names kept in memory for the server's life: as many as a person makes.
            if len(state.workspaces) > _WORKSPACES_MAX:
                return Response.error(400, f"at most {_WORKSPACES_MAX} workspace names")
            state.workspaces.append(name)
    return Response.json(200, {"id": workspace_id(name), "name": name, "token": state.token})


def _delete_workspace(state: State, request: Request, args: dict[str, str]) -> Response:
    with state.lock:
        state.workspaces[:] = [
            n for n in state.workspaces if n == WORKSPACE or workspace_id(n) != args["id"]
        ]
    return Response.json(200, {})


_ADMIN_TOKEN = "admin token"  # noqa: S105 - its name, not its value
_TOKEN_NAME = re.compile(r"[\w .-]{1,128}\Z")
_TOKEN_NAMES_MAX = 1000


def _token_entry(state: State, name: str) -> dict[str, Any]:
    return {
        "id": workspace_id(name),
        "name": name,
        "token": state.token,
        "scopes": [{"type": "ADMIN"}],
        "description": "the local server's one token"
        + ("" if name == _ADMIN_TOKEN else ", under the name a client gave it"),
    }


def _tokens(state: State, request: Request, args: dict[str, str]) -> Response:
    with state.lock:
        names = [_ADMIN_TOKEN, *state.token_names]
    return Response.json(200, {"tokens": [_token_entry(state, name) for name in names]})


def _find_token(state: State, key: str) -> str | None:
    """The token name that ``key`` (a name, or an id) stands for."""
    name = urllib.parse.unquote(key)
    with state.lock:
        names = [_ADMIN_TOKEN, *state.token_names]
    return next((n for n in names if name in (n, workspace_id(n))), None)


def _create_token(state: State, request: Request, args: dict[str, str]) -> Response:
    name = request.form().get("name") or ""
    if not _TOKEN_NAME.match(name):
        return Response.error(400, f"invalid token name {name!r}")
    with state.lock:
        if name != _ADMIN_TOKEN and name not in state.token_names:
            if len(state.token_names) >= _TOKEN_NAMES_MAX:
                return Response.error(400, f"at most {_TOKEN_NAMES_MAX} token names")
            state.token_names.append(name)
    return Response.json(200, _token_entry(state, name))


def _token(state: State, request: Request, args: dict[str, str]) -> Response:
    """``GET`` (``tb token copy``) and ``PUT`` (new scopes, ``tb push``) of one token."""
    name = _find_token(state, args["name"])
    if name is None:
        return Response.error(404, f"token {urllib.parse.unquote(args['name'])!r} not found")
    return Response.json(200, _token_entry(state, name))


ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("GET", re.compile(r"/v[01]/workspace/?"), _workspace),
    ("GET", re.compile(r"/(?P<version>v[01])/user/workspaces/?"), _user_workspaces),
    ("POST", re.compile(r"/v[01]/workspaces/?"), _create_workspace),
    ("DELETE", re.compile(r"/v[01]/workspaces/(?P<id>\w+)/?"), _delete_workspace),
    ("GET", re.compile(r"/v0/tokens/?"), _tokens),
    ("POST", re.compile(r"/v0/tokens/?"), _create_token),
    ("GET", re.compile(r"/v0/tokens/(?P<name>[^/]+)/?"), _token),
    ("PUT", re.compile(r"/v0/tokens/(?P<name>[^/]+)/?"), _token),
]
