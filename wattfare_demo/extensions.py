"""Flask extensions, created unbound and attached to the app in `create_app`."""

from typing import TYPE_CHECKING

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    # Stable constraint names, so Alembic autogenerate produces the same migration on
    # SQLite and PostgreSQL and never sees a spurious difference.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


db = SQLAlchemy(model_class=Base)
# The models' base class. To a type checker `db.Model` is an attribute, not a class; at
# run time it is `Base` with Flask-SQLAlchemy's mixins (table names, binds), so the
# checker is shown `Base`, whose columns and types are the same.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
migrate = Migrate()
