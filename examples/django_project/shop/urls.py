from django.urls import path

from shop import views

urlpatterns = [
    path("hello/<str:name>", views.hello),
    path("async/<str:name>", views.async_hello),
    path("boom", views.boom),
]
