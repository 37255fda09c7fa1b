"""The echo bot of loadtest/bench/compare.sh, written the way an aiogram 3 user would.

A webhook served by aiohttp (SimpleRequestHandler + setup_application) that checks the
secret token, with the Bot API base URL pointed at the stand-in. It behaves like
tgpipe-example-bot for the load generator's update mix:

- a private text that is not a command: echoed back;
- /start <payload>: a greeting that shows the payload;
- a press on a menu:<choice> button: the callback answered and the message edited;
- a user joining a group: welcomed by first name.

Configured by environment: BOT_TOKEN, BOT_API_URL (the stand-in), WEBHOOK_HOST,
WEBHOOK_PORT, WEBHOOK_PATH, WEBHOOK_URL (what setWebhook announces), WEBHOOK_SECRET.
"""

import os
import sys

from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.filters import JOIN_TRANSITION, ChatMemberUpdatedFilter, CommandObject, CommandStart
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, ChatMemberUpdated, Message
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web


class MenuChoice(CallbackData, prefix="menu"):
    """A button of /menu: packed as menu:<choice>."""

    choice: str


router = Router(name="example")


def first_name(user) -> str:
    return user.first_name if user is not None else "there"


@router.message(CommandStart())
async def start(message: Message, command: CommandObject) -> None:
    name = first_name(message.from_user)
    if command.args:
        greeting = f"Hello, {name}! You came with: {command.args}"
    else:
        greeting = f"Hello, {name}! Send me a text and I will echo it."
    await message.answer(greeting)


@router.message(F.chat.type == "private", F.text, ~F.text.startswith("/"))
async def echo(message: Message) -> None:
    await message.answer(message.text)


@router.callback_query(MenuChoice.filter())
async def chosen(query: CallbackQuery, callback_data: MenuChoice) -> None:
    text = f"You chose {callback_data.choice}."
    await query.answer(text)
    if query.message is not None:
        await query.bot.edit_message_text(
            text=text, chat_id=query.message.chat.id, message_id=query.message.message_id
        )


@router.chat_member(ChatMemberUpdatedFilter(JOIN_TRANSITION))
async def welcome(update: ChatMemberUpdated) -> None:
    name = first_name(update.new_chat_member.user)
    title = update.chat.title or "the group"
    await update.bot.send_message(update.chat.id, f"Welcome to {title}, {name}!")


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        print(f"error: {name} is not set", file=sys.stderr)
        sys.exit(64)
    return value


def main() -> None:
    secret = env("WEBHOOK_SECRET")
    url = env("WEBHOOK_URL")
    session = AiohttpSession(api=TelegramAPIServer.from_base(env("BOT_API_URL")))
    bot = Bot(token=env("BOT_TOKEN"), session=session)
    dp = Dispatcher()
    dp.include_router(router)

    async def on_startup(bot: Bot) -> None:
        await bot.set_webhook(url, secret_token=secret)

    dp.startup.register(on_startup)
    app = web.Application()
    SimpleRequestHandler(dispatcher=dp, bot=bot, secret_token=secret).register(
        app, path=env("WEBHOOK_PATH")
    )
    setup_application(app, dp, bot=bot)
    # No access log: one line per update would cost the bot more than the echo does.
    web.run_app(
        app,
        host=env("WEBHOOK_HOST"),
        port=int(env("WEBHOOK_PORT")),
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
