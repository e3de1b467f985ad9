# Forget-Me-Not Studio on the embedded model: docker build -t fmn . && docker run -p 7860:7860 fmn
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False

RUN useradd --create-home --uid 1000 studio
WORKDIR /home/studio/app

# The CPU build of torch keeps the image small; drop the index URL for a CUDA image.
COPY requirements.txt .
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

COPY --chown=studio:studio . .
USER studio
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
