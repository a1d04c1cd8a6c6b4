"""The raters' web page: a Flask app over a study (jaxlm/rate/study.py).

Pages are rendered on the server by Jinja2 templates with autoescaping, so a generation holding
HTML or `<script>` shows as text. What a page holds: the prompt (and reference), the two outputs as
left and right, the position and the count; never a system, a run or a step. The rater's name is
asked once and kept in a cookie; a vote is a form post that the server stores (one transaction)
before it answers with the next item, so the next item on screen is the confirmation.

With a token (required for a non-loopback address), every request must carry it: as `?token=`,
a form field, or the `X-Study-Token` header; the pages carry it in their links and forms.
"""

import hmac
from urllib.parse import quote, unquote

from flask import Flask, make_response, redirect, render_template, request, url_for

from jaxlm.errors import UserError
from jaxlm.rate.study import MAX_COMMENT, SCORES, Study, check_name

COOKIE = 'jaxlm_rater'


def create_app(study: Study, token: str | None = None) -> Flask:
  app = Flask(__name__)
  app.config['MAX_CONTENT_LENGTH'] = 64 * 1024

  def carried() -> str:
    return (request.args.get('token') or request.form.get('token')
            or request.headers.get('X-Study-Token') or '')

  @app.before_request
  def check_token():
    if token is not None and not hmac.compare_digest(carried().encode(), token.encode()):
      return _error('this study needs its token: open the link with ?token=... that the '
                    "study's owner gave you.", 403)
    return None

  def link(endpoint: str) -> str:
    return url_for(endpoint, **({'token': token} if token is not None else {}))

  def rater_name() -> str | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
      return None
    try:
      return check_name(unquote(raw))
    except UserError:
      return None

  @app.get('/')
  def index():
    if rater_name() is None:
      return render_template('name.html', token=token, action=link('set_rater'))
    return redirect(link('rate'), 303)

  @app.post('/rater')
  def set_rater():
    try:
      name = check_name(request.form.get('name', ''))
    except UserError as e:
      return _error(str(e), 400)
    response = redirect(link('rate'), 303)
    response.set_cookie(COOKIE, quote(name), max_age=365 * 86400, samesite='Strict',
                        httponly=True)
    return response

  @app.post('/forget')
  def forget():
    response = redirect(link('index'), 303)
    response.delete_cookie(COOKIE)
    return response

  @app.get('/rate')
  def rate():
    name = rater_name()
    if name is None:
      return redirect(link('index'), 303)
    with study.opened() as db:
      page = study.page(db, name, study.next_position(db, name))
    if page is None:
      return render_template('done.html', name=name, total=len(study.order(name)), token=token,
                             forget=link('forget'))
    return render_template('item.html', page=page, name=name, token=token, scores=SCORES,
                           action=link('vote'), forget=link('forget'), max_comment=MAX_COMMENT)

  @app.post('/vote')
  def vote():
    name = rater_name()
    if name is None:
      return _error('give your name first: open the start page again.', 400)
    form = request.form
    try:
      position = int(form.get('position', ''))
      scores = {k: int(form.get(k, '')) for k in SCORES}
    except ValueError:
      return _error('score fluency and accuracy from 1 to 5 on both sides and choose a verdict.',
                    400)
    try:
      study.vote(name, position, form.get('choice', ''), scores, form.get('comment', '').strip())
    except UserError as e:
      return _error(str(e), 409 if 'not the next one' in str(e) else 400)
    return redirect(link('rate'), 303)

  @app.get('/healthz')
  def healthz():
    return 'ok'

  @app.errorhandler(404)
  @app.errorhandler(405)
  @app.errorhandler(413)
  def http_error(e):
    return _error(f'{e.name}: {e.description}', e.code)

  return app


def _error(message: str, status: int):
  return make_response(render_template('error.html', message=message), status)
