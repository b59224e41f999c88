"""What gunicorn serves: ``gunicorn wsgi:app``."""
from app.web import create_app

app = create_app()
