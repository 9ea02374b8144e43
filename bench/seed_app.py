"""The seed's naive app, as the tutorial writes it: the benchmark's baseline.

FastAPI, a scikit-learn RandomForestClassifier trained on the iris data set at
import time, ``model.predict`` on every request, one uvicorn process, plain
HTTP. Nothing here is modelgate code; it is kept naive on purpose (no
authentication, no rate limiting, no TLS), which only flatters the baseline.

Run by ``bench/run.py`` as ``uvicorn seed_app:app --port PORT`` (one process).
"""

from fastapi import FastAPI
from pydantic import BaseModel
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

iris = load_iris()
model = RandomForestClassifier()
model.fit(iris.data, iris.target)

app = FastAPI()


class IrisInput(BaseModel):
    sepal_length: float
    sepal_width: float
    petal_length: float
    petal_width: float


@app.post("/predict")
def predict(data: IrisInput) -> dict[str, int]:
    features = [[data.sepal_length, data.sepal_width, data.petal_length, data.petal_width]]
    prediction = model.predict(features)
    return {"prediction": int(prediction[0])}
