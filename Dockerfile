FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e .
ENV SHOPSTREAM_HOST=0.0.0.0 SHOPSTREAM_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
CMD ["shopstream", "serve"]
