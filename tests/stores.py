"""The User Service's store seen from the tests: settings for either backend, and SQL from outside.

The fixtures that build on these (``db``, ``database_url``, ``make_app``) are in conftest.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import flask
import psycopg

from userservice import UserServiceSettings
from userservice.settings import SqliteDatabase
from userservice.store import UserStore


def settings_for(db: Path | str, **env: str) -> UserServiceSettings:
    """Settings for a SQLite file (a Path) or any database URL (a str)."""
    url = f"sqlite:///{db}" if isinstance(db, Path) else db
    return UserServiceSettings.from_env({"USERSERVICE_DATABASE_URL": url, **env})


def store_of(app: flask.Flask) -> UserStore:
    store: UserStore = app.extensions["userservice.store"]
    return store


def run_sql(url: str, statement: str) -> list[tuple[object, ...]]:
    """One statement on the database behind ``url``, outside the app (to break or check it)."""
    database = settings_for(url).database
    if isinstance(database, SqliteDatabase):
        with contextlib.closing(sqlite3.connect(database.path)) as sqlite:
            rows = sqlite.execute(statement).fetchall()
            sqlite.commit()
            return rows
    with psycopg.connect(database.conninfo, autocommit=True) as pg:
        cursor = pg.execute(statement.encode())
        return cursor.fetchall() if cursor.description else []
