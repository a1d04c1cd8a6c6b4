"""A local stand-in for a Google Cloud Storage bucket: gcp-storage-emulator's server, in memory, in
the test process. gcsfs (etils.epath's client for gs://) and TensorStore (Orbax's array writes)
are pointed at it through their emulator variables, which subprocesses inherit through `env`."""

import contextlib
import logging
import os
import socket
from typing import Iterator

# gcsfs reads this when imported: its experimental client probes each bucket's type with real
# credentials, which the stand-in has not.
os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false'


def _faithful_preconditions() -> None:
  """What the emulator lacks and Orbax's TensorStore writes rely on (GCS documents both): a
  media download carries the object's generation in x-goog-generation, and ifGenerationMatch /
  ifGenerationNotMatch are honoured (412, or 304 for a read) on reads, uploads and deletes.
  Without them OCDBT's conditional manifest writes fail ('Malformed StorageGeneration')."""
  from gcp_storage_emulator import server
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects
  from http import HTTPStatus

  def checked(handler, read=False, name_in_query=False):
    def wrapped(request, response, storage, *args, **kwargs):
      bucket = request.params['bucket_name']
      name = request.query['name'][0] if name_in_query else request.params['object_id']
      try:
        generation = int(storage.get_file_obj(bucket, name)['generation'])
      except NotFound:
        generation = 0
      match = request.query.get('ifGenerationMatch')
      not_match = request.query.get('ifGenerationNotMatch')
      if match and int(match[0]) != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
      if not_match and int(not_match[0]) == generation:
        response.status = HTTPStatus.NOT_MODIFIED if read else HTTPStatus.PRECONDITION_FAILED
        return None
      if read and generation:
        response['x-goog-generation'] = str(generation)
      return handler(request, response, storage, *args, **kwargs)
    wrapped.faithful = True
    return wrapped

  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      if getattr(handler, 'faithful', False):
        continue
      if handler in (objects.download, objects.get):
        handlers[method] = checked(handler, read=True)
      elif handler is objects.delete:
        handlers[method] = checked(handler)
      elif handler is objects.insert:
        handlers[method] = checked(handler, name_in_query=True)


@contextlib.contextmanager
def fake_gcs(bucket: str = 'jaxlm-test') -> Iterator[dict[str, str]]:
  """Serves `bucket` until the block ends; yields the environment that reaches it (also set in
  os.environ meanwhile)."""
  import gcsfs
  from gcp_storage_emulator.server import create_server
  logging.getLogger('gcp_storage_emulator').setLevel(logging.CRITICAL)
  _faithful_preconditions()
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  server = create_server('localhost', port, in_memory=True, default_bucket=bucket)
  server.start()
  server._api._httpd.handle_error = lambda *args: None  # clients that hang up early: no noise
  url = f'http://localhost:{port}'
  env = dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
             GOOGLE_AUTH_TOKEN_FOR_TESTING='fake', GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',
             EPATH_USE_TF='false')
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  gcsfs.GCSFileSystem.clear_instance_cache()  # a cached client would keep another endpoint
  try:
    yield env
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    gcsfs.GCSFileSystem.clear_instance_cache()
    server.stop()
