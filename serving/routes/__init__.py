"""The API's routes, one APIRouter per resource, included by :func:`serving.app.create_app` in this order."""
